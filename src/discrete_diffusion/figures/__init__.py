"""Figures: sample grids, progressive strips, forward corruption and the swiss roll."""
