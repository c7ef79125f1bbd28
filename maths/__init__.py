"""The project's mathematics that every layer uses, in numpy only (no model, no data): maths/gaussian.py."""
