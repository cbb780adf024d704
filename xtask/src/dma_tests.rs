//! DMA scenarios (issue 13 items 2-3, arm64): a virtio-blk PCI device behind the SMMUv3 Bulwark
//! owns (QEMU virt `iommu=smmuv3`), driven by the test guest (`guest-images/aarch64-test/src/
//! dma.rs`), and the same device on a machine without an SMMU. docs/aarch64.md, "SMMUv3".

use std::path::PathBuf;

use bulwark_abi::console::{reason, STATUS_BULWARK_FAILURE};

use crate::aarch64::{need, out, quiet, refute, run_with, Extra};
use crate::util::{RunOpts, Scenario};

/// Sectors in the disk image.
const SECTORS: u64 = 64;

/// Byte `i` of sector `s` (the test guest's `dma::sector_byte` agrees).
fn sector_byte(s: u64, i: usize) -> u8 {
    if i < 8 {
        b"BWDISK\0\0"[i] | if i == 7 { s as u8 } else { 0 }
    } else {
        (i as u8).wrapping_mul(7) ^ (s as u8).wrapping_mul(13)
    }
}

/// The disk image with known bytes (written fresh for every run: the guest only reads it).
fn disk_image() -> Result<PathBuf, String> {
    let p = out()?.join("dma-disk.img");
    let mut b = Vec::with_capacity((SECTORS * 512) as usize);
    for s in 0..SECTORS {
        b.extend((0..512).map(|i| sector_byte(s, i)));
    }
    std::fs::write(&p, &b).map_err(|e| format!("{}: {e}", p.display()))?;
    Ok(p)
}

/// QEMU arguments for a modern (virtio 1.0) virtio-blk PCI device on `disk`. `iommu_platform=on`
/// makes QEMU send the device's DMA through the platform IOMMU (QEMU's virtio devices bypass an
/// emulated IOMMU without it; real devices cannot); the device then offers
/// VIRTIO_F_ACCESS_PLATFORM, which the test guest accepts.
fn blk_args(disk: &std::path::Path) -> Vec<String> {
    vec![
        "-drive".into(),
        format!("if=none,file={},format=raw,id=d0", disk.display()),
        "-device".into(),
        "virtio-blk-pci,drive=d0,disable-legacy=on,iommu_platform=on".into(),
    ]
}

/// Marker in sector 0 of the Linux scenario's disk.
const LINUX_DISK_MARKER: &str = "BULWARK-LINUX-DISK-SECTOR0-OK";

/// Debian's kernel with a virtio-blk PCI disk behind Bulwark's SMMU: the initramfs loads
/// Debian's own virtio_pci / virtio_blk modules, waits for /dev/vda and prints its first bytes.
fn linux_disk() -> Result<(), String> {
    use crate::aarch64::{
        bundle, busybox_initramfs_with, debian_dir, debian_kernel_and_busybox, INIT_MARKER,
        LINUX_CMDLINE, LINUX_CPU,
    };
    let (kernel, busybox) = debian_kernel_and_busybox()?;
    let dir = debian_dir()?;
    let mods = dir.join("extracted/lib/modules");
    let ver = std::fs::read_dir(&mods)
        .map_err(|e| format!("{}: {e}", mods.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .next()
        .ok_or("no kernel modules in the Debian package")?;
    let names = [
        ("virtio/virtio_pci_legacy_dev", "drivers"),
        ("virtio/virtio_pci_modern_dev", "drivers"),
        ("virtio/virtio_pci", "drivers"),
        ("block/virtio_blk", "drivers"),
    ];
    let mut files = Vec::new();
    let mut script = String::from("#!/bin/busybox sh\n/bin/busybox mount -t devtmpfs dev /dev\n");
    for (m, sub) in names {
        let p = ver.join("kernel").join(sub).join(format!("{m}.ko"));
        let data = std::fs::read(&p).map_err(|e| format!("{}: {e}", p.display()))?;
        let base = m.rsplit('/').next().unwrap_or(m);
        files.push((format!("lib/{base}.ko"), data));
        script.push_str(&format!("/bin/busybox insmod /lib/{base}.ko\n"));
    }
    script.push_str(
        "i=0\nwhile [ ! -b /dev/vda ] && [ $i -lt 30 ]; do /bin/busybox sleep 1; i=$((i+1)); done\n\
         /bin/busybox echo \"disk: $(/bin/busybox head -c 29 /dev/vda)\"\n",
    );
    script.push_str(&format!(
        "/bin/busybox echo {INIT_MARKER}\n/bin/busybox poweroff -f\n"
    ));
    let files: Vec<(&str, Vec<u8>)> = files.iter().map(|(n, d)| (n.as_str(), d.clone())).collect();
    let initramfs = dir.join("initramfs-disk.cpio");
    std::fs::write(
        &initramfs,
        busybox_initramfs_with(&busybox, &script, &files)?,
    )
    .map_err(|e| e.to_string())?;
    let payload = dir.join("linux-disk-bundle.bin");
    bundle(&kernel, &initramfs, &payload)?;
    let disk = out()?.join("linux-disk.img");
    let mut img = LINUX_DISK_MARKER.as_bytes().to_vec();
    img.resize(1 << 20, 0);
    std::fs::write(&disk, &img).map_err(|e| format!("{}: {e}", disk.display()))?;
    let o = RunOpts {
        cpu: Some(LINUX_CPU.into()),
        guest_cmdline: LINUX_CMDLINE.into(),
        timeout: Some(180),
        ..quiet()
    };
    let x = Extra {
        payload: Some(payload),
        iommu: true,
        qemu_args: blk_args(&disk),
        ..Extra::default()
    };
    let out = run_with(&o, &x)?;
    out.expect(0, reason::GUEST_EXIT)?;
    need(&out, "SMMUv3: enabled, StreamIDs 0..256 translated")?;
    need(
        &out,
        "device /pcie@10000000: passed through (PCI host bridge",
    )?;
    need(&out, "virtio_blk virtio0: [vda]")?;
    need(&out, &format!("disk: {LINUX_DISK_MARKER}"))?;
    need(&out, INIT_MARKER)?;
    // Every transfer went through the SMMU's translation without a fault.
    need(&out, "violations_dma=0")
}

pub fn scenarios(emu: &'static str) -> Vec<Scenario> {
    vec![
        Scenario::new(
            "aarch64: Debian arm64 kernel reads its virtio-blk PCI disk behind Bulwark's SMMUv3",
            emu,
            linux_disk,
        ),
        Scenario::new(
            "aarch64: DMA behind Bulwark's SMMUv3 (issue 13): virtio-blk reads into RAM, not into a ROE-locked page nor Bulwark's window",
            emu,
            || {
                let disk = disk_image()?;
                let o = RunOpts {
                    guest_cmdline: "scenario=dma".into(),
                    ..quiet()
                };
                let x = Extra {
                    iommu: true,
                    qemu_args: blk_args(&disk),
                    ..Extra::default()
                };
                let out = run_with(&o, &x)?;
                out.expect(0, reason::GUEST_EXIT)?;
                need(&out, "testguest: dma: all checks passed")?;
                // Bulwark took the SMMU (QEMU 7.2: stage 1 only) and handed the bridge over.
                need(&out, "(S1P=1 S2P=0)")?;
                need(&out, "taken by Bulwark (stage 1 (tables owned by Bulwark)); hidden from the guest")?;
                need(&out, "device /smmuv3@9050000: hidden from the guest (IOMMU owned by Bulwark")?;
                need(&out, "device /pcie@10000000: passed through (PCI host bridge: every requester ID's DMA goes through the SMMUv3 Bulwark owns)")?;
                need(&out, "SMMUv3: enabled, StreamIDs 0..256 translated")?;
                // (a) worked; (b) and (c) refused by the SMMU and named.
                need(&out, "testguest: ok   dma: (a) sector 0 read into an ordinary page")?;
                need(&out, "testguest: ok   dma: (b) the ROE-locked page at")?;
                need(&out, "bulwark: violation kind=roe access=dma-write gpa=0x")?;
                need(&out, "stream=8 event=F_PERMISSION")?;
                need(&out, "bulwark: violation kind=bulwark access=dma-write gpa=0x5e010000 stream=8 event=F_TRANSLATION")?;
                // Bulwark's own later lines are intact.
                need(&out, "bulwark: INFO counters exits=")?;
                need(&out, "violations_dma=")?;
                refute(&out, "testguest: FAIL", "a guest check failed")?;
                refute(&out, "testguest: dma: FAIL", "a guest check failed")
            },
        ),
        Scenario::new(
            "aarch64: violation=halt ends the run at the first DMA violation (issue 13)",
            emu,
            || {
                let disk = disk_image()?;
                let o = RunOpts {
                    cmdline: "violation=halt".into(),
                    guest_cmdline: "scenario=dma".into(),
                    ..quiet()
                };
                let x = Extra {
                    iommu: true,
                    qemu_args: blk_args(&disk),
                    ..Extra::default()
                };
                let out = run_with(&o, &x)?;
                out.expect(STATUS_BULWARK_FAILURE, reason::VIOLATION_HALT)?;
                need(&out, "bulwark: violation kind=roe access=dma-write gpa=0x")?;
                need(&out, "event=F_PERMISSION")?;
                need(&out, "action=halt")?;
                need(&out, "testguest: ok   dma: (b) the ROE-locked page at")?;
                refute(&out, "dma: (c)", "the guest ran on past the violation")
            },
        ),
        Scenario::new(
            "aarch64: without an SMMU the PCI device is not handed over (issue 13)",
            emu,
            || {
                let disk = disk_image()?;
                let o = RunOpts {
                    guest_cmdline: "scenario=dma-nopci".into(),
                    ..quiet()
                };
                let x = Extra {
                    qemu_args: blk_args(&disk),
                    ..Extra::default()
                };
                let out = run_with(&o, &x)?;
                out.expect(0, reason::GUEST_EXIT)?;
                need(&out, "testguest: dma-nopci: all checks passed")?;
                need(&out, "bulwark: INFO no SMMUv3 in the device tree: DMA-capable devices (PCI) are not handed over")?;
                need(&out, "device /pcie@10000000: hidden from the guest (DMA master: PCI host bridge, its devices master DMA, and no SMMUv3 under Bulwark's control confines them)")?;
                refute(&out, "testguest: FAIL", "a guest check failed")
            },
        ),
    ]
}
