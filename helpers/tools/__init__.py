"""The two user-facing tools: ``predict`` (command line) and ``app`` (Streamlit web app)."""
