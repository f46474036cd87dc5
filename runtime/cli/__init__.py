"""The runtime's command-line tools (``python -m runtime COMMAND``) and what they share."""
