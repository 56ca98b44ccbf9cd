//! Client library for the registry HTTP API.
