"""The web app behind gradio_app.py: recipes and the job queue (no gradio import here)."""
