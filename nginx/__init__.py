"""nginx configuration for the service: the template and its renderer (render.py)."""
