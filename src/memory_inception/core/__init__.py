"""The bottom layer: banks, sites, steering, layer plans, the operator, storage accounting, per-model defaults.
Nothing here knows about HTTP, files other than bank files, or the layers above."""
