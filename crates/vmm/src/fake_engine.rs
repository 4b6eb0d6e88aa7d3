//! An engine that runs no guest, for fast API tests. The real path is tested with QEMU.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::oneshot;

use crate::engine::{Engine, EngineError, ExitWatch, RunningVm, VmExit};
use crate::resources::VmResources;

/// Records what it was asked to do; can be told to end its "guest".
#[derive(Clone, Default)]
pub struct FakeEngine {
    /// How long `start` takes, to exercise time-outs and GET liveness.
    pub start_delay: Duration,
    /// Calls made on the running fake guest, in order.
    pub calls: Arc<Mutex<Vec<&'static str>>>,
    /// What the running fake guest reports as [`RunningVm::unplugging`].
    pub unplugging: Arc<Mutex<Vec<String>>>,
    exit: Arc<Mutex<Option<oneshot::Sender<VmExit>>>>,
}

impl FakeEngine {
    pub fn with_start_delay(start_delay: Duration) -> Self {
        Self {
            start_delay,
            ..Self::default()
        }
    }

    fn record(&self, call: &'static str) {
        self.calls.lock().expect("fake engine lock").push(call);
    }
}

pub struct FakeVm {
    engine: FakeEngine,
}

impl Engine for FakeEngine {
    type Vm = FakeVm;

    async fn start(
        &mut self,
        _resources: &VmResources,
    ) -> Result<(FakeVm, ExitWatch), EngineError> {
        tokio::time::sleep(self.start_delay).await;
        let (tx, rx) = oneshot::channel();
        *self.exit.lock().expect("fake engine lock") = Some(tx);
        self.record("start");
        Ok((
            FakeVm {
                engine: self.clone(),
            },
            rx,
        ))
    }
}

impl RunningVm for FakeVm {
    async fn pause(&mut self) -> Result<(), EngineError> {
        self.engine.record("pause");
        Ok(())
    }

    async fn resume(&mut self) -> Result<(), EngineError> {
        self.engine.record("resume");
        Ok(())
    }

    async fn send_ctrl_alt_del(&mut self) -> Result<(), EngineError> {
        self.engine.record("ctrl-alt-del");
        Ok(())
    }

    fn update_net_rate_limiters(
        &mut self,
        _iface_id: &str,
        _rx: Option<crate::resources::rate_limiter::RateLimiterConfig>,
        _tx: Option<crate::resources::rate_limiter::RateLimiterConfig>,
    ) -> Result<(), EngineError> {
        self.engine.record("update-net");
        Ok(())
    }

    async fn swap_drive(
        &mut self,
        _drive: &crate::resources::drive::Drive,
    ) -> Result<(), EngineError> {
        self.engine.record("swap-drive");
        Ok(())
    }

    async fn set_drive_rate_limiter(
        &mut self,
        _drive_id: &str,
        _limiter: Option<crate::resources::rate_limiter::RateLimiterConfig>,
    ) -> Result<(), EngineError> {
        self.engine.record("drive-rate-limiter");
        Ok(())
    }

    async fn set_balloon_target(&mut self, _amount_mib: u32) -> Result<(), EngineError> {
        self.engine.record("balloon-target");
        Ok(())
    }

    async fn set_balloon_stats_interval(&mut self, _seconds: u16) -> Result<(), EngineError> {
        self.engine.record("balloon-stats-interval");
        Ok(())
    }

    async fn balloon_stats(
        &mut self,
    ) -> Result<crate::resources::balloon::BalloonStats, EngineError> {
        Ok(crate::resources::balloon::BalloonStats::default())
    }

    fn unplugging(&self) -> Vec<String> {
        self.engine
            .unplugging
            .lock()
            .expect("fake engine lock")
            .clone()
    }
}

/// Opens no TAP: names starting with `tap` succeed, any other name fails as the kernel would
/// refuse an interface that is not a TAP (EINVAL), so API tests need no privileges.
pub fn fake_tap_opener() -> squib_net::tap::TapOpener {
    std::sync::Arc::new(|name: &str| {
        if name.len() >= 16 {
            Err(squib_net::tap::TapError::InvalidIfname)
        } else if name.starts_with("tap") {
            Ok(squib_net::tap::TapHandle::detached(name))
        } else {
            Err(squib_net::tap::TapError::IfreqExecuteError(
                std::io::Error::from_raw_os_error(libc::EINVAL).into(),
                name.to_string(),
            ))
        }
    })
}
