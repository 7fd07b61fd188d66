"""Inputs and outputs of the engine (the lead moves inputs, video, fileio, layout and download here later)."""
