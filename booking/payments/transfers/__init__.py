"""Bank transfer: payment references, the patient's transfer, its proofs and
page, finance's reconciliation of bank statements, and the patient's data
rights over them."""
