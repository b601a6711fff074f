"""The commands' bodies that run a model over data and write what comes out: `predict`,
`evaluate` (and out-of-fold pooling), cross-validation and fitting the decision rule."""
