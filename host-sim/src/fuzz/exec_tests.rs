//! The fuzzer's gRPC answers on a guest that makes calls (the filter does not yet):
//! `host-engine/tests/wat/grpc_guest.wat` pauses each request on a call.

use anyhow::{anyhow, bail, Result};

use super::answer_grpc;
use crate::fuzz::case::GrpcPlan;
use crate::fuzz::{gen, Rng};
use crate::Host;

const GUEST: &str = include_str!("../../../host-engine/tests/wat/grpc_guest.wat");

#[test]
fn every_generated_plan_answers_the_calls_and_releases_the_request() -> Result<()> {
    let mut kinds = [0usize; 3];
    for seed in 0..200 {
        let plans = gen::grpc_plans(&mut Rng::for_case(seed, 0));
        for p in &plans {
            kinds[match p {
                GrpcPlan::Ok(_) => 0,
                GrpcPlan::Status { .. } => 1,
                GrpcPlan::Timeout => 2,
            }] += 1;
        }
        let mut host = Host::builder().wat(GUEST).plugin_config("Tquota").build()?;
        host.start()?;
        host.advance_ms(50)?;
        answer_grpc(&mut host, &plans)?;
        let mut ex = host.worker(0).request().header("x-grpc", "quota").send();
        answer_grpc(ex.host(), &plans)?;
        if ex.stalled() || ex.trap().is_some() {
            bail!(
                "seed {seed}: {plans:?} left the request stalled or trapped: {:?}",
                ex.trap()
            );
        }
        let up = ex
            .upstream()
            .ok_or_else(|| anyhow!("seed {seed}: nothing upstream"))?;
        let answered = up.header("x-grpc-answer").is_some() || up.header("x-grpc-close").is_some();
        assert!(answered, "seed {seed}: {plans:?}: {:?}", up.headers);
        ex.finish()?;
        assert!(host.pending_grpc_calls().is_empty(), "seed {seed}");
        assert!(host.traps().is_empty(), "seed {seed}: {:?}", host.traps());
    }
    assert!(
        kinds.iter().all(|&k| k > 20),
        "every kind of answer is generated: {kinds:?}"
    );
    Ok(())
}
