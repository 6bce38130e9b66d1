//! `psbroker bench codec`: how fast a large Get-Mailbox answer is decoded on the wire path.
//!
//! The simulator generates the mailboxes; each becomes a PIPELINE_OUTPUT message (CLIXML),
//! fragmented as a server would send it. The timed part is what the client does per Receive:
//! reassemble fragments, decode the PSRP message, parse its CLIXML into a `PsValue`.

use super::ms;
use crate::config::SimulatorConfig;
use crate::remote::psrp::messages::pipeline_output;
use crate::remote::psrp::{Defragmenter, Fragmenter, Message};
use crate::remote::PsValue;
use crate::sim::{SimAccount, Simulator};
use std::time::Instant;
use uuid::Uuid;

#[derive(clap::Args, Debug, Clone)]
pub struct CodecArgs {
    #[arg(long, default_value_t = 10_000)]
    pub mailboxes: u32,
    /// Fragment size the server uses (about what fits a 153,600-byte envelope in base64).
    #[arg(long, default_value_t = 110_000)]
    pub fragment_bytes: usize,
    #[arg(long, default_value_t = 5)]
    pub rounds: u32,
}

fn mailboxes(n: u32) -> anyhow::Result<Vec<PsValue>> {
    let tenant = "bench.onmicrosoft.com".to_string();
    let cfg = SimulatorConfig { mailboxes_per_tenant: n, ..SimulatorConfig::default() };
    let account = SimAccount { upn: "a@bench".into(), password: "pw".into(), tenants: vec!["*".into()] };
    let sim = Simulator::new(&cfg, vec![account], vec![tenant.clone()]);
    let shell = sim.open_shell("a@bench", "pw", &tenant, "Microsoft.Exchange").map_err(|e| anyhow::anyhow!("{e}"))?;
    let params = vec![("ResultSize".to_string(), PsValue::String("Unlimited".into()))];
    let out = sim.run(&shell, Uuid::new_v4(), "Get-Mailbox", &params).map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(out.objects)
}

pub fn run(args: CodecArgs) -> anyhow::Result<()> {
    let objects = mailboxes(args.mailboxes)?;
    let (rpid, pid) = (Uuid::new_v4(), Uuid::new_v4());
    let mut fragmenter = Fragmenter::new(args.fragment_bytes)?;
    let mut wire = Vec::new();
    let mut clixml_bytes = 0usize;
    for o in &objects {
        let message = pipeline_output(rpid, pid, o);
        clixml_bytes += message.data.len();
        for f in fragmenter.fragment_encoded(&message.encode()) {
            wire.extend_from_slice(&f);
        }
    }
    // Receive responses carry at most one fragment-sized chunk each.
    let chunks: Vec<&[u8]> = wire.chunks(args.fragment_bytes).collect();
    let mut best = f64::INFINITY;
    let mut decoded = 0;
    for _ in 0..args.rounds {
        let started = Instant::now();
        let mut defrag = Defragmenter::new();
        decoded = 0;
        for chunk in &chunks {
            for body in defrag.push(chunk)? {
                let value = Message::decode(&body)?.value()?;
                std::hint::black_box(&value);
                decoded += 1;
            }
        }
        best = best.min(ms(started.elapsed()));
    }
    anyhow::ensure!(decoded == objects.len(), "decoded {decoded} of {} objects", objects.len());
    let mb = clixml_bytes as f64 / 1e6;
    println!("psbroker bench codec: Get-Mailbox answer of {} mailboxes, best of {} rounds", objects.len(), args.rounds);
    println!(
        "  CLIXML                   {mb:.1} MB ({:.0} bytes per mailbox), {:.1} MB on the wire with PSRP framing",
        clixml_bytes as f64 / objects.len() as f64,
        wire.len() as f64 / 1e6
    );
    println!(
        "  reassemble + decode      {best:.0} ms → {:.0} MB/s, {:.0} objects/s",
        mb / (best / 1000.0),
        objects.len() as f64 / (best / 1000.0)
    );
    Ok(())
}
