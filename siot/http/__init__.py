"""The HTTP API (DESIGN §9): aiohttp on the daemon's own loop, every write through the one write
path in process (DESIGN §1). siot/http/server.py says how it is wired and how to add routes.

Imported by the daemon only (siot/app.py), never by `siot.client`: aiohttp stays out of what a
device or a script loads.
"""
