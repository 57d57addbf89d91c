"""Image-quality metrics on detector features: FID, KID, Inception Score, precision/recall."""
