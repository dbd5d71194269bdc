"""The neXt-Ray Streamlit dashboard: a thin layer over nextray_core (see app.py)."""
