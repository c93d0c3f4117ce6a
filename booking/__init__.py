"""Booking: doctors' availability, slots, the booking lifecycle and refunds."""
