"""Host models: one module per pixel-grounding VLM."""
