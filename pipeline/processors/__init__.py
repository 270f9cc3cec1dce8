"""Pure, per-device processors. One module per processor; `pipeline.topology` wires them."""
