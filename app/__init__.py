"""billing-mirror: a verified Stripe Billing webhook receiver that keeps a SQL mirror."""
