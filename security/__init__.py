"""Security pieces of the service: each module has a core usable without Flask and a thin
`init_app(app, settings)`. Nothing here imports torch."""
