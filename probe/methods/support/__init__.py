"""What the methods share, none of it a method: input checks, site -> hook names, the logit readout,
labelled sequences, activation datasets, integrated gradients' path quadrature, gradient mode and
the result base class. Methods import from here; nothing here imports a method."""
