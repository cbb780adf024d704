//! Bulwark x86_64 back end: VMX, VMCS, EPT/SPPT hardware glue, exit decoding.
#![no_std]
