"""One query module per readable resource; app.read.registry lists them."""
