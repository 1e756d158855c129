"""nnU-Net, the self-configuring method, in one place: raw data, fingerprint, plans,
preprocessing, the training recipe and sliding-window inference (the network is
:class:`ife_jax.nn.NNUNet`)."""
