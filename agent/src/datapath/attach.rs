//! Attaching the programs to an interface: TCX links (kernel >= 6.6), pinned per interface
//! under `<bpffs_dir>/links/<ifindex>_<hook>` so they survive the agent; netlink clsact filters
//! on older kernels (they live in the kernel's tc state, no pin needed).
//!
//! The program for the pod's egress (`netward_egress`) goes on the host veth's tc *ingress*
//! hook and vice versa.
use std::ffi::CString;
use std::fs;
use std::io;
use std::path::PathBuf;

use anyhow::{anyhow, Context, Result};
use aya::maps::{Array, MapData};
use aya::programs::links::{FdLink, PinnedLink};
use aya::programs::tc::{self, NlOptions, SchedClassifierLink, TcAttachOptions, TcHandle};
use aya::programs::{LinkOrder, SchedClassifier, TcAttachType};
use aya::util::KernelVersion;
use netward_common::POD_VETH_WORDS;

use super::loader::{PROG_EGRESS, PROG_INGRESS};
use super::Datapath;

/// How programs are attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttachMode {
    /// TCX links, pinned (kernel >= 6.6).
    Tcx,
    /// Netlink clsact direct-action filters (older kernels).
    Netlink,
}

impl AttachMode {
    pub fn detect() -> AttachMode {
        match KernelVersion::current() {
            Ok(v) if v >= KernelVersion::new(6, 6, 0) => AttachMode::Tcx,
            _ => AttachMode::Netlink,
        }
    }
}

/// tc filter priority and handle used in netlink mode (fixed so a new agent replaces ours).
const NL_PRIORITY: u16 = 1;
const NL_HANDLE: TcHandle = TcHandle::new(0x4e57, 1);

/// The two hooks of an interface and the program for each.
const HOOKS: [(TcAttachType, &str, &str); 2] = [
    (TcAttachType::Ingress, "ingress", PROG_EGRESS),
    (TcAttachType::Egress, "egress", PROG_INGRESS),
];

fn ifindex(ifname: &str) -> Result<u32> {
    let c = CString::new(ifname)?;
    // SAFETY: valid NUL-terminated string.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if i == 0 {
        return Err(io::Error::last_os_error()).with_context(|| format!("interface {ifname}"));
    }
    Ok(i)
}

fn ifname(ifindex: u32) -> Option<String> {
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: buf has IF_NAMESIZE bytes as required.
    let p = unsafe { libc::if_indextoname(ifindex, buf.as_mut_ptr()) };
    if p.is_null() {
        return None;
    }
    // SAFETY: if_indextoname wrote a NUL-terminated name into buf.
    Some(
        unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) }
            .to_string_lossy()
            .into_owned(),
    )
}

/// A pod veth whose direct delivery [`Datapath::recheck_direct`] turned on or off.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirectChange {
    pub ifname: String,
    pub direct: bool,
    /// Why it is off.
    pub why: Option<String>,
}

/// Our programs' ids and the interfaces with an ingress-side qdisc (see `qdisc`).
struct TcView {
    /// `netward_egress`, on the host veth's tc ingress hook.
    egress: u32,
    /// `netward_ingress`, on its tc egress hook.
    ingress: u32,
    ingress_qdiscs: std::collections::BTreeSet<u32>,
}

impl TcView {
    /// Why `ifname` may not take direct delivery, or `None` when it may: both our programs on
    /// its hooks (TCX), ours alone on its tc ingress hook (a program after ours would be
    /// skipped by our redirect, one before it could change what ours sees), and no
    /// ingress-side qdisc (its filters run after TCX, and would be skipped too).
    fn refusal(&self, ifname: &str, idx: u32) -> Result<Option<String>> {
        let (_, ingress) = SchedClassifier::query_tcx(ifname, TcAttachType::Ingress)?;
        if !ingress.iter().any(|p| p.id() == self.egress) {
            return Ok(Some(
                "netward's program is not on its tc ingress hook".into(),
            ));
        }
        if let Some(other) = ingress.iter().find(|p| p.id() != self.egress) {
            return Ok(Some(format!(
                "another program (id {}) is on its tc ingress hook",
                other.id()
            )));
        }
        let (_, egress) = SchedClassifier::query_tcx(ifname, TcAttachType::Egress)?;
        if !egress.iter().any(|p| p.id() == self.ingress) {
            return Ok(Some(
                "netward's program is not on its tc egress hook".into(),
            ));
        }
        if self.ingress_qdiscs.contains(&idx) {
            return Ok(Some("it has an ingress or clsact qdisc".into()));
        }
        Ok(None)
    }
}

impl Datapath {
    fn link_pin(&self, ifindex: u32, hook: &str) -> PathBuf {
        self.cfg
            .bpffs_dir
            .join("links")
            .join(format!("{ifindex}_{hook}"))
    }

    fn classifier(&mut self, name: &str) -> Result<&mut SchedClassifier> {
        Ok(self
            .bpf
            .program_mut(name)
            .ok_or_else(|| anyhow!("program {name} missing"))?
            .try_into()?)
    }

    /// `POD_VETHS`, the interfaces the datapath may deliver same-node flows to directly (see
    /// the programs' `deliver`): this module is its only writer. `None`: an object without it
    /// (an older build a benchmark loads).
    fn pod_veths(&mut self) -> Result<Option<Array<&mut MapData, u64>>> {
        let Some(map) = self.bpf.map_mut("POD_VETHS") else {
            return Ok(None);
        };
        Ok(Some(Array::try_from(map).context("POD_VETHS")?))
    }

    /// Mark interface `idx` as a pod veth with our programs (`on`) or not; whether the mark
    /// changed. An index beyond the bitmap is never marked: its pod's flows take the node's
    /// path.
    fn mark_pod_veth(&mut self, idx: u32, on: bool) -> Result<bool> {
        let (word, bit) = (idx / 64, 1u64 << (idx % 64));
        if word >= POD_VETH_WORDS {
            return Ok(false);
        }
        let Some(mut arr) = self.pod_veths()? else {
            return Ok(false);
        };
        let cur = arr.get(&word, 0).context("reading POD_VETHS")?;
        let new = if on { cur | bit } else { cur & !bit };
        if new != cur {
            arr.set(word, new, 0).context("writing POD_VETHS")?;
        }
        Ok(new != cur)
    }

    /// Make `POD_VETHS` hold exactly `capable` (the interfaces whose pinned links survived a
    /// reload and that qualify): a bit left by an earlier agent for an interface that went
    /// away while no agent ran must not send flows to whatever reuses its index.
    fn rebuild_pod_veths(&mut self, capable: &[u32]) -> Result<()> {
        let mut want = vec![0u64; POD_VETH_WORDS as usize];
        for &idx in capable {
            if let Some(w) = want.get_mut((idx / 64) as usize) {
                *w |= 1 << (idx % 64);
            }
        }
        let Some(mut arr) = self.pod_veths()? else {
            return Ok(());
        };
        for (i, w) in want.into_iter().enumerate() {
            let i = i as u32;
            if arr.get(&i, 0).context("reading POD_VETHS")? != w {
                arr.set(i, w, 0).context("writing POD_VETHS")?;
            }
        }
        Ok(())
    }

    /// What decides whether pod veths may take direct delivery, read once per pass over them.
    fn tc_view(&mut self) -> Result<TcView> {
        Ok(TcView {
            egress: self.classifier(PROG_EGRESS)?.info()?.id(),
            ingress: self.classifier(PROG_INGRESS)?.info()?.id(),
            ingress_qdiscs: super::qdisc::ingress_qdiscs()?,
        })
    }

    /// Why `ifname`'s pod may not send and receive by direct delivery (see
    /// [`TcView::refusal`]), or `None` when it may. A failed check is a reason: the pod's
    /// flows take the node's path.
    fn direct_refusal(&self, view: &Result<TcView>, ifname: &str, idx: u32) -> Option<String> {
        if self.mode != AttachMode::Tcx {
            return Some("attached by netlink, not TCX".into());
        }
        let checked = match view {
            Ok(view) => view.refusal(ifname, idx),
            Err(e) => Err(anyhow!("{e:#}")),
        };
        checked.unwrap_or_else(|e| Some(format!("checking its tc hooks failed ({e:#})")))
    }

    /// Check again every interface we enforce on, and mark or unmark it in `POD_VETHS`: a tc
    /// program or qdisc that another component added to a pod's veth after netward attached
    /// (or removed since) is seen here. The agent and the lab daemon call it every few
    /// seconds; an unmarked veth neither sends nor receives directly from the next packet on
    /// (the programs read the bitmap on every one). Logs and returns what changed.
    pub fn recheck_direct(&mut self) -> Result<Vec<DirectChange>> {
        if self.mode != AttachMode::Tcx {
            return Ok(Vec::new());
        }
        let view = self.tc_view();
        let mut changes = Vec::new();
        for idx in self.attached()? {
            let Some(name) = ifname(idx) else {
                continue;
            };
            let refusal = self.direct_refusal(&view, &name, idx);
            if self.mark_pod_veth(idx, refusal.is_none())? {
                match &refusal {
                    None => tracing::info!("{name}: same-node delivery on"),
                    Some(why) => tracing::warn!(
                        "{name}: same-node delivery off, {why}: its flows take the node's path"
                    ),
                }
                changes.push(DirectChange {
                    ifname: name,
                    direct: refusal.is_none(),
                    why: refusal,
                });
            }
        }
        Ok(changes)
    }

    /// Enforce on `ifname` (a pod's host-side veth). Idempotent: attaching again replaces the
    /// programs in the pinned links atomically (`bpf_link_update`). Once both programs are
    /// on, the interface is marked in `POD_VETHS` if it qualifies ([`TcView::refusal`]).
    pub fn attach(&mut self, ifname: &str) -> Result<()> {
        let idx = ifindex(ifname)?;
        self.attach_programs(ifname, idx)?;
        let view = self.tc_view();
        let refusal = self.direct_refusal(&view, ifname, idx);
        if let (AttachMode::Tcx, Some(why)) = (self.mode, &refusal) {
            tracing::info!(
                "{ifname}: no same-node delivery, {why}: its flows take the node's path"
            );
        }
        self.mark_pod_veth(idx, refusal.is_none()).map(drop)
    }

    fn attach_programs(&mut self, ifname: &str, idx: u32) -> Result<()> {
        match self.mode {
            AttachMode::Tcx => {
                for (hook, hook_name, prog) in HOOKS {
                    let pin = self.link_pin(idx, hook_name);
                    if let Ok(old) = PinnedLink::from_pin(&pin) {
                        // Already attached: swap our program into the live link atomically.
                        let link: SchedClassifierLink = FdLink::from(old).try_into()?;
                        let classifier = self.classifier(prog)?;
                        match classifier.attach_to_link(link) {
                            Ok(id) => {
                                drop(FdLink::try_from(classifier.take_link(id)?)?);
                                continue;
                            }
                            // A defunct link (its interface went away and the index was
                            // reused): replace the pin with a fresh link below.
                            Err(_) => fs::remove_file(&pin)
                                .with_context(|| format!("remove stale {}", pin.display()))?,
                        }
                    }
                    let classifier = self.classifier(prog)?;
                    // First in the chain: policy runs before anything that might redirect.
                    let id = classifier
                        .attach_with_options(
                            ifname,
                            hook,
                            TcAttachOptions::TcxOrder(LinkOrder::first()),
                        )
                        .with_context(|| format!("attach {prog} to {ifname} tc {hook_name}"))?;
                    let link: FdLink = classifier.take_link(id)?.try_into()?;
                    link.pin(&pin)
                        .with_context(|| format!("pin {}", pin.display()))?;
                }
            }
            AttachMode::Netlink => {
                if let Err(e) = tc::qdisc_add_clsact(ifname) {
                    if !matches!(&e, tc::TcError::NetlinkError(n) if n.raw_os_error() == Some(libc::EEXIST))
                    {
                        return Err(e).with_context(|| format!("add clsact qdisc to {ifname}"));
                    }
                }
                for (hook, hook_name, prog) in HOOKS {
                    let classifier = self.classifier(prog)?;
                    let opts = NlOptions {
                        priority: NL_PRIORITY,
                        handle: NL_HANDLE,
                        classid: None,
                    };
                    // Create; when our priority/handle already holds a filter (agent restart,
                    // repeated attach), replace its program instead.
                    let id = match classifier.attach_with_options(
                        ifname,
                        hook,
                        TcAttachOptions::Netlink(opts),
                    ) {
                        Ok(id) => id,
                        Err(create_err) => {
                            let existing = SchedClassifierLink::attached(
                                ifname,
                                hook,
                                NL_PRIORITY,
                                NL_HANDLE,
                                None,
                            )?;
                            classifier
                                .attach_to_link(existing)
                                .map_err(|_| create_err)
                                .with_context(|| {
                                    format!("attach {prog} to {ifname} tc {hook_name}")
                                })?
                        }
                    };
                    // Leave the filter in the kernel when we go away.
                    let link = classifier.take_link(id)?;
                    std::mem::forget(link);
                }
            }
        }
        Ok(())
    }

    /// Stop enforcing on `ifname`.
    pub fn detach(&mut self, ifname: &str) -> Result<()> {
        let idx = ifindex(ifname)?;
        self.detach_index(idx)
    }

    pub(crate) fn detach_index(&mut self, idx: u32) -> Result<()> {
        // No new deliveries to it first: they would skip the node's stack to reach a veth
        // without our programs.
        self.mark_pod_veth(idx, false)?;
        for (hook, hook_name, prog) in HOOKS {
            let pin = self.link_pin(idx, hook_name);
            match PinnedLink::from_pin(&pin) {
                Ok(link) => drop(link.unpin()?), // last reference: the link detaches
                Err(_) if self.mode == AttachMode::Netlink => {
                    if let Some(name) = ifname(idx) {
                        let _ = tc::qdisc_detach_program(&name, hook, prog);
                    }
                }
                Err(_) => {}
            }
        }
        Ok(())
    }

    /// Interfaces with pinned links (TCX mode).
    pub fn attached(&self) -> Result<Vec<u32>> {
        let mut out = Vec::new();
        let dir = self.cfg.bpffs_dir.join("links");
        let Ok(rd) = fs::read_dir(&dir) else {
            return Ok(out);
        };
        for e in rd {
            let name = e?.file_name().to_string_lossy().into_owned();
            if let Some(idx) = name.split('_').next().and_then(|s| s.parse::<u32>().ok()) {
                if !out.contains(&idx) {
                    out.push(idx);
                }
            }
        }
        out.sort_unstable();
        Ok(out)
    }

    /// After (re)loading: move every pinned link to the freshly loaded programs atomically;
    /// drop links whose interface has disappeared. In TCX mode `POD_VETHS` is then rebuilt
    /// from the links kept (netlink mode marks nothing).
    pub(crate) fn adopt_pinned_links(&mut self) -> Result<()> {
        let mut capable = Vec::new();
        let view = self.tc_view();
        for idx in self.attached()? {
            let Some(name) = ifname(idx) else {
                for (_, hook_name, _) in HOOKS {
                    let pin = self.link_pin(idx, hook_name);
                    if let Ok(link) = PinnedLink::from_pin(&pin) {
                        drop(link.unpin()?);
                    }
                }
                continue;
            };
            for (_, hook_name, prog) in HOOKS {
                let pin = self.link_pin(idx, hook_name);
                let Ok(pinned) = PinnedLink::from_pin(&pin) else {
                    continue;
                };
                let link: SchedClassifierLink = FdLink::from(pinned).try_into()?;
                let classifier = self.classifier(prog)?;
                let id = classifier
                    .attach_to_link(link)
                    .with_context(|| format!("replace program in {}", pin.display()))?;
                // The pin keeps the (same) link alive; our fd can go.
                let link: FdLink = classifier.take_link(id)?.try_into()?;
                drop(link);
            }
            if self.direct_refusal(&view, &name, idx).is_none() {
                capable.push(idx);
            }
        }
        if self.mode == AttachMode::Tcx {
            self.rebuild_pod_veths(&capable)?;
        }
        Ok(())
    }
}
