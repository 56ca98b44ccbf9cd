//! ZooKeeper backend client: one session per client, ephemeral znodes under `/svc/<service>`,
//! subscribers re-arm a child watch after every change.

use std::time::Duration;

use anyhow::Result;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use zookeeper_client::{Acls, Client, CreateMode};

use crate::backend::Update;

pub struct ZkClient {
    client: Client,
    background: Vec<JoinHandle<()>>,
}

fn parent(service: &str) -> String {
    format!("/svc/{service}")
}

impl ZkClient {
    /// `detached`: dropping the client leaves the session open on the server (it then expires
    /// after its timeout) instead of closing it, which is how a crashed client looks.
    pub async fn connect(endpoint: &str, ttl: Duration, detached: bool) -> Result<Self> {
        let mut connector = Client::connector().with_session_timeout(ttl);
        if detached {
            connector = connector.with_detached();
        }
        let client = connector.connect(endpoint).await?;
        Ok(Self {
            client,
            background: Vec::new(),
        })
    }

    /// Creates the persistent parent znode of a service (idempotent).
    pub async fn prepare(&self, service: &str) -> Result<()> {
        self.client
            .mkdir(
                &parent(service),
                &CreateMode::Persistent.with_acls(Acls::anyone_all()),
            )
            .await?;
        Ok(())
    }

    pub async fn register(&self, service: &str, instance: &str) -> Result<()> {
        let path = format!("{}/{instance}", parent(service));
        self.client
            .create(
                &path,
                instance.as_bytes(),
                &CreateMode::Ephemeral.with_acls(Acls::anyone_all()),
            )
            .await?;
        Ok(())
    }

    /// Creates several ephemeral znodes in one `multi` request (all or nothing).
    pub async fn register_batch(&self, regs: &[(&str, String)]) -> Result<()> {
        let mode = CreateMode::Ephemeral.with_acls(Acls::anyone_all());
        let mut writer = self.client.new_multi_writer();
        for (service, instance) in regs {
            writer.add_create(
                &format!("{}/{instance}", parent(service)),
                instance.as_bytes(),
                &mode,
            )?;
        }
        writer.commit().await?;
        Ok(())
    }

    /// Lists the children with a watch (the first update), and re-lists with a new watch each
    /// time it fires.
    pub async fn subscribe(
        &mut self,
        service: &str,
        sub: usize,
        tx: mpsc::UnboundedSender<Update>,
    ) -> Result<()> {
        let path = parent(service);
        let (children, _, mut watcher) = self.client.get_and_watch_children(&path).await?;
        let _ = tx.send(Update {
            sub,
            at: Instant::now(),
            instances: children,
        });
        let client = self.client.clone();
        let task = tokio::spawn(async move {
            loop {
                watcher.changed().await;
                match client.get_and_watch_children(&path).await {
                    Ok((children, _, next)) => {
                        if tx
                            .send(Update {
                                sub,
                                at: Instant::now(),
                                instances: children,
                            })
                            .is_err()
                        {
                            break;
                        }
                        watcher = next;
                    }
                    Err(_) => break,
                }
            }
        });
        self.background.push(task);
        Ok(())
    }

    pub fn vanish(self) {}
}

impl Drop for ZkClient {
    fn drop(&mut self) {
        for t in &self.background {
            t.abort();
        }
    }
}
