//! Who may run what where: roles, the deny-list, tenant and cmdlet scopes, parameter
//! constraints. Pure policy — no HTTP, no SQL — so every rule is tested on its own.

use super::classify::{self, binds_to, Class, Reason};
use super::pattern::{Glob, Patterns};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value as Json};
use std::fmt;

/// What a token may do beyond its scopes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// Reads only (see [`classify`]): `Search-Mailbox -DeleteContent` is not one.
    ReadOnly,
    /// Reads, and writes or destructive cmdlets whose verb is one of [`OPERATOR_VERBS`].
    Operator,
    /// Every cmdlet that is not host-level; manages tokens; sees every invocation, batch and
    /// audit record.
    Admin,
}

/// Verbs of the writes an operator may run: the verbs Exchange Online and Microsoft 365 use to
/// change directory and mailbox objects. `Start`/`Stop` are included (for example
/// Start-ManagedFolderAssistant, Stop-HistoricalSearch); the ones that reach the host
/// (Start-Process, Stop-Computer, Start-Job, ...) are host-level, which no role lifts. Writes
/// with any other verb (Import, Export, Send, or a read verb whose parameters make it a write,
/// like `Search-Mailbox -DeleteContent`) need an admin token.
pub const OPERATOR_VERBS: [&str; 15] = [
    "Set", "New", "Add", "Remove", "Enable", "Disable", "Update", "Start", "Stop", "Clear", "Restore", "Suspend",
    "Resume", "Grant", "Revoke",
];

impl Role {
    pub fn parse(text: &str) -> Result<Role, String> {
        match text.to_ascii_lowercase().as_str() {
            "read-only" | "readonly" | "reader" => Ok(Role::ReadOnly),
            "operator" => Ok(Role::Operator),
            "admin" => Ok(Role::Admin),
            _ => Err(format!("role '{text}' is not one of read-only, operator, admin")),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::ReadOnly => "read-only",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }

    /// Whether the role may run a cmdlet of `class` with this verb (host-level: never).
    pub fn allows(self, class: Class, verb: &str) -> bool {
        match (self, class) {
            (_, Class::HostLevel) => false,
            (_, Class::Read) | (Role::Admin, _) => true,
            (Role::Operator, _) => OPERATOR_VERBS.iter().any(|v| v.eq_ignore_ascii_case(verb)),
            (Role::ReadOnly, _) => false,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

pub fn is_denied(cmdlet: &str) -> bool {
    classify::denied_by(cmdlet).is_some()
}

/// A limit on one parameter's values, like JEA's ValidateSet / ValidatePattern: `Name=a|b|c`
/// where each alternative is a glob. String values must match an alternative; numbers and
/// booleans are compared by their JSON text; an array must have every element allowed; a
/// hashtable or null is refused. A request that does not pass the parameter is not affected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Constraint {
    pub parameter: String,
    alternatives: Vec<Glob>,
    text: String,
}

impl Constraint {
    pub fn parse(text: &str) -> Result<Constraint, String> {
        let (name, rule) =
            text.split_once('=').ok_or_else(|| format!("constraint '{text}' is not Parameter=Pattern"))?;
        let name = name.trim().trim_start_matches('-');
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(format!("constraint '{text}': '{name}' is not a parameter name"));
        }
        if rule.is_empty() || rule.split('|').any(|a| a.is_empty()) {
            return Err(format!("constraint '{text}' has an empty alternative"));
        }
        Ok(Constraint {
            parameter: name.to_string(),
            alternatives: rule.split('|').map(Glob::new).collect(),
            text: format!("{name}={rule}"),
        })
    }

    /// Whether a parameter named `given` is this one: equal ignoring case, or an abbreviation
    /// of it (PowerShell binds unambiguous prefixes, so `-Ident` must not dodge `Identity=`).
    pub fn applies_to(&self, given: &str) -> bool {
        binds_to(given, &self.parameter)
    }

    fn allows(&self, value: &Json) -> bool {
        let one = |s: &str| self.alternatives.iter().any(|g| g.matches(s));
        match value {
            Json::String(s) => one(s),
            Json::Number(n) => one(&n.to_string()),
            Json::Bool(b) => one(&b.to_string()),
            Json::Array(items) => items.iter().all(|v| !v.is_array() && self.allows(v)),
            Json::Null | Json::Object(_) => false,
        }
    }
}

impl fmt::Display for Constraint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// The rule that refused a request; its code is the API's error code (403).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    TenantNotInScope,
    CmdletNotAllowed,
    CmdletDenied,
    RoleForbidsVerb,
    RoleForbidsCmdlet,
    ParameterConstraint,
    AdminOnly,
}

impl Rule {
    pub fn code(self) -> &'static str {
        match self {
            Rule::TenantNotInScope => "tenant_not_in_scope",
            Rule::CmdletNotAllowed => "cmdlet_not_allowed",
            Rule::CmdletDenied => "cmdlet_denied",
            Rule::RoleForbidsVerb => "role_forbids_verb",
            Rule::RoleForbidsCmdlet => "role_forbids_cmdlet",
            Rule::ParameterConstraint => "parameter_constraint",
            Rule::AdminOnly => "admin_only",
        }
    }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct Refusal {
    pub rule: Rule,
    pub message: String,
}

impl Refusal {
    fn new(rule: Rule, message: String) -> Refusal {
        Refusal { rule, message }
    }

    pub fn admin_only(what: &str) -> Refusal {
        Refusal::new(Rule::AdminOnly, format!("{what} needs an admin token"))
    }
}

/// An authenticated caller: the token's name and what it may do.
#[derive(Debug, Clone)]
pub struct Principal {
    pub name: String,
    pub role: Role,
    pub tenants: Patterns,
    pub cmdlets: Patterns,
    pub constraints: Vec<Constraint>,
}

impl Principal {
    /// Everyone, when `[auth] enabled = false` (loopback only).
    pub fn unauthenticated_admin() -> Principal {
        Principal {
            name: "anonymous".into(),
            role: Role::Admin,
            tenants: Patterns::any(),
            cmdlets: Patterns::any(),
            constraints: vec![],
        }
    }

    pub fn is_admin(&self) -> bool {
        self.role == Role::Admin
    }

    /// Whether the caller may see (read, cancel, list) something owned by `owner`. Rows stored
    /// before owners existed (`None`) are an admin's only.
    pub fn may_see(&self, owner: Option<&str>) -> bool {
        self.is_admin() || owner == Some(self.name.as_str())
    }

    pub fn in_tenant_scope(&self, tenant: &str) -> bool {
        self.tenants.matches(tenant)
    }

    /// Every rule, in a fixed order: deny-list (host-level cmdlets), tenant scope, cmdlet
    /// allow-list, role (by the cmdlet's class), then parameter constraints. The first that
    /// refuses names itself.
    pub fn authorize(&self, tenant: &str, cmdlet: &str, parameters: &Map<String, Json>) -> Result<(), Refusal> {
        let what = classify::classify(cmdlet, parameters);
        if let Reason::DenyList(entry) = what.reason {
            return Err(Refusal::new(
                Rule::CmdletDenied,
                format!(
                    "'{cmdlet}' is host-level or tampers with the shared session (deny-list entry '{entry}'); no token may run it"
                ),
            ));
        }
        if !self.tenants.matches(tenant) {
            return Err(Refusal::new(
                Rule::TenantNotInScope,
                format!("token '{}' may not act on tenant '{tenant}'", self.name),
            ));
        }
        if !self.cmdlets.matches(cmdlet) {
            return Err(Refusal::new(
                Rule::CmdletNotAllowed,
                format!("token '{}' may not run '{cmdlet}' (allowed: {})", self.name, self.cmdlets),
            ));
        }
        let verb = classify::verb(cmdlet);
        if !self.role.allows(what.class, verb) {
            let (rule, why) = match what.reason {
                Reason::Parameter(p) => (Rule::RoleForbidsCmdlet, format!("{cmdlet} with -{p} is {}", what.class)),
                Reason::Cmdlet => (Rule::RoleForbidsCmdlet, format!("{cmdlet} is {}", what.class)),
                _ => (Rule::RoleForbidsVerb, format!("the verb '{verb}' is {}", what.class)),
            };
            return Err(Refusal::new(
                rule,
                format!("role {} of token '{}' may not run this: {why}", self.role, self.name),
            ));
        }
        for (name, value) in parameters {
            for c in self.constraints.iter().filter(|c| c.applies_to(name)) {
                if !c.allows(value) {
                    return Err(Refusal::new(
                        Rule::ParameterConstraint,
                        format!("parameter '{name}' is outside the token's constraint {c}"),
                    ));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn principal(role: Role, tenants: &str, cmdlets: &str, constraints: &[&str]) -> Principal {
        Principal {
            name: "t".into(),
            role,
            tenants: Patterns::parse(tenants).unwrap(),
            cmdlets: Patterns::parse(cmdlets).unwrap(),
            constraints: constraints.iter().map(|c| Constraint::parse(c).unwrap()).collect(),
        }
    }

    fn code(p: &Principal, tenant: &str, cmdlet: &str, params: Json) -> Option<&'static str> {
        p.authorize(tenant, cmdlet, params.as_object().unwrap()).err().map(|r| r.rule.code())
    }

    #[test]
    fn roles_limit_verbs() {
        let ro = principal(Role::ReadOnly, "*", "*", &[]);
        assert_eq!(code(&ro, "c.onmicrosoft.com", "Get-Mailbox", json!({})), None);
        assert_eq!(code(&ro, "c.onmicrosoft.com", "search-UnifiedAuditLog", json!({})), None);
        assert_eq!(code(&ro, "c.onmicrosoft.com", "Set-Mailbox", json!({})), Some("role_forbids_verb"));
        let op = principal(Role::Operator, "*", "*", &[]);
        assert_eq!(code(&op, "c", "Set-Mailbox", json!({})), None);
        assert_eq!(code(&op, "c", "Remove-MailUser", json!({})), None);
        assert_eq!(code(&op, "c", "Export-MailboxDiagnosticLogs", json!({})), Some("role_forbids_verb"));
        let admin = principal(Role::Admin, "*", "*", &[]);
        assert_eq!(code(&admin, "c", "Export-MailboxDiagnosticLogs", json!({})), None);
    }

    #[test]
    fn the_deny_list_binds_even_admins() {
        let admin = principal(Role::Admin, "*", "*", &[]);
        for c in [
            "Invoke-Expression",
            "invoke-command",
            "Start-Job",
            "Receive-Job",
            "Add-Type",
            "Set-PSSessionConfiguration",
        ] {
            assert_eq!(code(&admin, "c", c, json!({})), Some("cmdlet_denied"), "{c}");
        }
        assert!(!is_denied("Get-Mailbox") && !is_denied("Start-ManagedFolderAssistant"));
    }

    #[test]
    fn roles_follow_what_the_cmdlet_does_not_only_its_verb() {
        let ro = principal(Role::ReadOnly, "*", "*", &[]);
        let purge = json!({"Identity": "u", "DeleteContent": true, "Force": true});
        assert_eq!(code(&ro, "c", "Search-Mailbox", purge.clone()), Some("role_forbids_cmdlet"));
        assert_eq!(code(&ro, "c", "Search-Mailbox", json!({"Identity": "u", "EstimateResultOnly": true})), None);
        assert_eq!(code(&ro, "c", "Test-Mailflow", json!({})), Some("role_forbids_cmdlet"), "sends mail");
        for host in ["Get-Content", "Get-ChildItem", "Test-NetConnection"] {
            assert_eq!(code(&ro, "c", host, json!({})), Some("cmdlet_denied"), "{host}");
        }
        let op = principal(Role::Operator, "*", "*", &[]);
        assert_eq!(code(&op, "c", "Search-Mailbox", purge.clone()), Some("role_forbids_cmdlet"));
        assert_eq!(code(&op, "c", "Remove-Mailbox", json!({})), None, "destructive, with an operator verb");
        assert_eq!(code(&op, "c", "Set-Variable", json!({})), Some("cmdlet_denied"));
        let admin = principal(Role::Admin, "*", "*", &[]);
        assert_eq!(code(&admin, "c", "Search-Mailbox", purge), None);
        assert_eq!(code(&admin, "c", "New-CimSession", json!({})), Some("cmdlet_denied"));
    }
}
