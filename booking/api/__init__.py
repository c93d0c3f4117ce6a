"""HTTP resources of the booking API, one module per resource."""
