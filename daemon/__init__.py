"""voucherify-relay: push notifications for Voucherify's async actions."""

__version__ = "0.1.0"
