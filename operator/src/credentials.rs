//! The cluster's own credentials (SECURITY.md): generated once per RegistryCluster, kept
//! in two Secrets the cluster owns, never handled by users.
//!
//! - `{name}-membership-signing-key` (`ed25519-seed`): the key that signs every membership
//!   document. Only the operator reads it; no pod mounts it.
//! - `{name}-cluster-credentials` (`cluster-token`, `membership-key`): the token that opens
//!   the nodes' internal protocol and the public half of the signing key; every node gets
//!   both as environment.
//!
//! Secrets are created, never overwritten: a random value is written once, with `create`,
//! so two passes (or a stale replica) can never replace a key the nodes already trust.

use crate::resources::{
    self, Names, SECRET_CLUSTER_TOKEN, SECRET_MEMBERSHIP_KEY, SECRET_SIGNING_SEED,
};
use crate::{Error, Result};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt};
use registry_trust::{generate_token, MembershipSigner};

use crate::crd::RegistryCluster;

/// What the reconciler needs of the cluster's credentials.
pub struct ClusterCredentials {
    /// The bearer token of `/internal/*`.
    pub cluster_token: String,
    /// Signs membership documents.
    pub signer: MembershipSigner,
}

/// The value of `key` in a Secret (`data`, else `stringData`), trimmed; `None` when absent
/// or empty.
pub fn secret_value(secret: &Secret, key: &str) -> Option<String> {
    let from_data = secret
        .data
        .as_ref()
        .and_then(|d| d.get(key))
        .and_then(|b| String::from_utf8(b.0.clone()).ok());
    let from_string = secret
        .string_data
        .as_ref()
        .and_then(|d| d.get(key))
        .cloned();
    from_data
        .or(from_string)
        .map(|t| t.trim().to_owned())
        .filter(|t| !t.is_empty())
}

/// The answer to a `create`: the created object, or `None` when it already existed (a
/// concurrent pass created it first; the caller reads that one).
fn created(result: kube::Result<Secret>) -> kube::Result<Option<Secret>> {
    match result {
        Ok(created) => Ok(Some(created)),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(None),
        Err(e) => Err(e),
    }
}

/// Reads the cluster's credentials, creating what is missing.
pub async fn ensure(client: &Client, rc: &RegistryCluster) -> Result<ClusterCredentials> {
    let ns = rc.namespace().ok_or(Error::MissingNamespace)?;
    let names = Names(&rc.name_any());
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);

    let signing_name = names.membership_signing_key();
    let mut signing = secrets.get_opt(&signing_name).await?;
    if signing.is_none() {
        let new = resources::membership_signing_key(rc, &MembershipSigner::generate());
        signing = match created(secrets.create(&PostParams::default(), &new).await)? {
            Some(s) => Some(s),
            None => secrets.get_opt(&signing_name).await?,
        };
    }
    let signing =
        signing.ok_or_else(|| Error::Credentials(format!("secret {signing_name} vanished")))?;
    let seed = secret_value(&signing, SECRET_SIGNING_SEED).ok_or_else(|| {
        Error::Credentials(format!(
            "secret {signing_name} has no {SECRET_SIGNING_SEED}"
        ))
    })?;
    let signer = MembershipSigner::from_seed_base64(&seed).map_err(|e| {
        Error::Credentials(format!("secret {signing_name}: {SECRET_SIGNING_SEED}: {e}"))
    })?;
    let public = signer.public_key();

    let credentials_name = names.cluster_credentials();
    let mut credentials = secrets.get_opt(&credentials_name).await?;
    if credentials.is_none() {
        let new = resources::cluster_credentials(rc, &generate_token(), &public);
        credentials = match created(secrets.create(&PostParams::default(), &new).await)? {
            Some(s) => Some(s),
            None => secrets.get_opt(&credentials_name).await?,
        };
    }
    let credentials = credentials
        .ok_or_else(|| Error::Credentials(format!("secret {credentials_name} vanished")))?;
    let mut cluster_token = secret_value(&credentials, SECRET_CLUSTER_TOKEN);
    let stored_key = secret_value(&credentials, SECRET_MEMBERSHIP_KEY);
    if cluster_token.is_none() || stored_key.as_deref() != Some(public.to_base64().as_str()) {
        // Someone edited the Secret: restore what nodes must have. Pods read it at start.
        let token = cluster_token.clone().unwrap_or_else(generate_token);
        let fixed = resources::cluster_credentials(rc, &token, &public);
        let patch = serde_json::json!({ "data": fixed.data });
        secrets
            .patch(
                &credentials_name,
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await?;
        cluster_token = Some(token);
    }
    Ok(ClusterCredentials {
        cluster_token: cluster_token.unwrap_or_default(),
        signer,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::ByteString;
    use std::collections::BTreeMap;

    #[test]
    fn secret_values_come_from_data_or_string_data() {
        let mut s = Secret {
            data: Some(BTreeMap::from([(
                "a".to_owned(),
                ByteString(b" tok \n".to_vec()),
            )])),
            ..Default::default()
        };
        assert_eq!(secret_value(&s, "a").as_deref(), Some("tok"));
        assert_eq!(secret_value(&s, "b"), None);
        s.string_data = Some(BTreeMap::from([("b".to_owned(), "x".to_owned())]));
        assert_eq!(secret_value(&s, "b").as_deref(), Some("x"));
        s.data = Some(BTreeMap::from([("c".to_owned(), ByteString(Vec::new()))]));
        assert_eq!(secret_value(&s, "c"), None, "an empty value is no value");
    }

    #[test]
    fn the_secrets_hold_what_their_readers_need_and_nothing_more() {
        let rc = RegistryCluster::example("reg", "ns1", "registry-node:1").with_uid("u-1");
        let signer = MembershipSigner::generate();
        let signing = resources::membership_signing_key(&rc, &signer);
        assert_eq!(
            signing.metadata.name.as_deref(),
            Some("reg-membership-signing-key")
        );
        let seed = secret_value(&signing, SECRET_SIGNING_SEED).unwrap();
        assert_eq!(
            MembershipSigner::from_seed_base64(&seed)
                .unwrap()
                .public_key(),
            signer.public_key()
        );
        let creds = resources::cluster_credentials(&rc, "tok", &signer.public_key());
        assert_eq!(
            creds.metadata.name.as_deref(),
            Some("reg-cluster-credentials")
        );
        assert_eq!(
            secret_value(&creds, SECRET_CLUSTER_TOKEN).as_deref(),
            Some("tok")
        );
        assert_eq!(
            secret_value(&creds, SECRET_MEMBERSHIP_KEY),
            Some(signer.public_key().to_base64())
        );
        let keys: Vec<_> = creds.data.unwrap().into_keys().collect();
        assert_eq!(
            keys,
            [SECRET_CLUSTER_TOKEN, SECRET_MEMBERSHIP_KEY],
            "no private key for nodes"
        );
        for s in [&signing.metadata, &creds.metadata] {
            assert_eq!(s.owner_references.as_ref().unwrap()[0].uid, "u-1");
        }
    }
}
