"""Where models live: the hybrid DeepSpeed strategy and its generation switch."""
