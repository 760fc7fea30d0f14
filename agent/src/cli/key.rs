//! `key list|add|remove|passwd`: the repository's keys.

use anyhow::Context;
use ringvault_common::keys::KdfParams;
use serde::Serialize;

use super::ctx::Ctx;
use super::{Cli, KeyCommand, format_time, print_json};
use crate::password;

/// `key ...`: lists, adds, removes or replaces the repository's keys.
pub(super) async fn run_key(ctx: &Ctx, command: &KeyCommand) -> anyhow::Result<u8> {
    let r = ctx.repo().await?;
    let code = match command {
        KeyCommand::List => {
            let keys = r.keys().await?;
            if ctx.cli.json {
                println!("{}", serde_json::to_string(&keys)?);
            } else {
                println!(" {:<16}  {:<12}  {:<20}  created", "id", "user", "host");
                for k in &keys {
                    println!(
                        "{}{:<16}  {:<12}  {:<20}  {}",
                        if k.current { "*" } else { " " },
                        &k.id[..16],
                        k.user,
                        k.host,
                        if k.created_ns == 0 {
                            "-".to_owned()
                        } else {
                            format_time(k.created_ns)
                        }
                    );
                }
            }
            0
        }
        KeyCommand::Add { new_password_file } => {
            let password = password::new_password(new_password_file.as_deref())?;
            let id = r.add_key(&password, KdfParams::default()).await?;
            print_key_change(&ctx.cli, "added", &id);
            0
        }
        KeyCommand::Remove { id } => {
            let id = r.find_key(id).await?;
            r.remove_key(id).await?;
            print_key_change(&ctx.cli, "removed", &id);
            0
        }
        KeyCommand::Passwd { new_password_file } => {
            let password = password::new_password(new_password_file.as_deref())?;
            let id = r.add_key(&password, KdfParams::default()).await?;
            r.cluster
                .delete_key(r.key_id)
                .await
                .context("removing the old key (the new one is stored: remove the old one with `ringvault key remove`)")?;
            print_key_change(&ctx.cli, "replaced the current key by", &id);
            0
        }
    };
    r.cluster.close().await;
    Ok(code)
}

/// `key add|remove|passwd --json`: what was done, and to which key.
#[derive(Serialize)]
struct KeyChangeJson<'a> {
    done: &'a str,
    id: &'a str,
}

/// Prints a key change: what was `done` and the key's id.
fn print_key_change(cli: &Cli, what: &str, id: &[u8; 32]) {
    let id = hex::encode(id);
    if cli.json {
        print_json(&KeyChangeJson {
            done: what,
            id: &id,
        });
    } else {
        println!("{what} key {}", &id[..16]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::prints_as_a_value;

    #[test]
    fn key_changes_print_as_their_json_values_did() {
        let id = "ab".repeat(32);
        assert!(prints_as_a_value(&KeyChangeJson {
            done: "added",
            id: &id
        }));
    }
}
