"""The web UI (docs/ui.md): static files in `static/` served by the daemon's HTTP server at `/`
(siot/web/assets.py), and the read-only endpoints the UI needs beyond DESIGN §9
(siot/web/routes.py). Imported by the HTTP server only, never by `siot.client`.
"""
