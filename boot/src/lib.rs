//! Entry code and boot-information parsing.
#![cfg_attr(not(test), no_std)]
