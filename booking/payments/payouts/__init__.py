"""Paying doctors: what a doctor is owed, manual payouts, payout batches for
the bank's bulk upload, doctors' sealed bank details, and a doctor's data
export."""
