//! Integration tests of the shuffle service.
