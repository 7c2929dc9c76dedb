"""The KServe predictor and its manifests."""
