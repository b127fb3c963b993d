"""dynod's pytest plugin (plugin.py): throwaway spaces and apps on a real daemon, for testing an
app the way it runs on Heroku (routing, Private Spaces, DNS discovery, config vars)."""
