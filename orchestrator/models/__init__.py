"""Models the product builds locally, with no download (the light pool's offline default, the CLI's `models`)."""
