"""Pure tensor functions: no configs, no modules."""
