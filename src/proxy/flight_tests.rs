//! Unit tests for the flight bookkeeping.
