"""Model recipes (installed as tinyq.models); see tinyq.recipes."""
