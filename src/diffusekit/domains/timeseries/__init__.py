"""Time-series forecasting with diffusion models (TSDiff) on GluonTS containers and metrics."""
