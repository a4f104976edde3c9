"""Assemble a Space bundle (app + runtime) and deploy it with huggingface_hub."""
