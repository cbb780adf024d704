//! Distinct address types: a guest-physical, host-physical and guest-virtual address never
//! cross an API as a raw `u64`.

macro_rules! addr_type {
    ($(#[$m:meta])* $name:ident) => {
        $(#[$m])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
        #[repr(transparent)]
        pub struct $name(pub u64);

        impl $name {
            pub const fn new(v: u64) -> Self { Self(v) }
            pub const fn as_u64(self) -> u64 { self.0 }
            /// Offset inside a 4 KiB page.
            pub const fn page_offset(self) -> u64 { self.0 & 0xfff }
            /// Rounded down to its 4 KiB page.
            pub const fn page_base(self) -> Self { Self(self.0 & !0xfff) }
            /// 4 KiB frame number.
            pub const fn frame(self) -> u64 { self.0 >> 12 }
            pub const fn from_frame(f: u64) -> Self { Self(f << 12) }
            pub const fn is_aligned(self, align: u64) -> bool { self.0 % align == 0 }
            /// Overflow-checked addition.
            pub fn checked_add(self, n: u64) -> Option<Self> { self.0.checked_add(n).map(Self) }
        }

        impl core::fmt::Debug for $name {
            fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
                write!(f, concat!(stringify!($name), "({:#x})"), self.0)
            }
        }
        impl core::fmt::LowerHex for $name {
            fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
                core::fmt::LowerHex::fmt(&self.0, f)
            }
        }
    };
}

addr_type!(
    /// Guest-physical address (x86 GPA, arm64 IPA).
    GuestPhysAddr
);
addr_type!(
    /// Host-physical address (machine address Bulwark owns).
    HostPhysAddr
);
addr_type!(
    /// Guest-virtual address, meaningful only with the guest's paging state.
    GuestVirtAddr
);

pub const PAGE_SIZE: u64 = 4096;

/// A half-open guest-physical range `[start, end)`, never empty, never wrapping.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct GpaRange {
    start: GuestPhysAddr,
    end: GuestPhysAddr,
}

impl GpaRange {
    /// `[start, start + len)`; `None` when `len` is 0 or the end wraps.
    pub fn new(start: GuestPhysAddr, len: u64) -> Option<Self> {
        if len == 0 {
            return None;
        }
        let end = start.checked_add(len)?;
        Some(Self { start, end })
    }
    /// `[start, end)`; `None` when empty or reversed.
    pub fn from_bounds(start: GuestPhysAddr, end: GuestPhysAddr) -> Option<Self> {
        (start < end).then_some(Self { start, end })
    }
    pub const fn start(self) -> GuestPhysAddr {
        self.start
    }
    /// Exclusive end.
    pub const fn end(self) -> GuestPhysAddr {
        self.end
    }
    pub const fn len(self) -> u64 {
        self.end.0 - self.start.0
    }
    /// Never true (ranges are never empty); present for API completeness.
    pub const fn is_empty(self) -> bool {
        false
    }
    pub const fn contains(self, a: GuestPhysAddr) -> bool {
        self.start.0 <= a.0 && a.0 < self.end.0
    }
    /// Smallest range covering both.
    pub fn union(self, other: Self) -> Self {
        Self {
            start: if self.start < other.start {
                self.start
            } else {
                other.start
            },
            end: if self.end > other.end {
                self.end
            } else {
                other.end
            },
        }
    }
    /// Both ends rounded outwards to 4 KiB pages (`None` if the end would wrap).
    pub fn page_aligned_outer(self) -> Option<Self> {
        let start = self.start.page_base();
        let end = self.end.0.checked_add(PAGE_SIZE - 1)? & !(PAGE_SIZE - 1);
        Self::from_bounds(start, GuestPhysAddr(end))
    }
}
