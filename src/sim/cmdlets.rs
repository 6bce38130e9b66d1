//! The simulated Exchange cmdlets: PowerShell's parameter binding (case-insensitive names, unique
//! prefixes, typed values, mandatory parameters) and the cmdlets' semantics over a tenant's
//! directory, with the error records PowerShell and Exchange themselves write.

use super::world::{self, new_mail_user, parse_quota, Recipient, RecipientKind, TenantData};
use crate::remote::{CommandOutput, ErrorRecord, PsObject, PsValue};

/// What happened to one command.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// PowerShell refused the command before it ran (unknown command, parameter binding failed).
    NotExecuted(ErrorRecord),
    /// The command ran: its output (with non-terminating errors), or the terminating error it threw.
    Executed(Result<CommandOutput, ErrorRecord>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cmd {
    GetMailbox,
    SetMailbox,
    GetUser,
    NewMailUser,
    SetMailUser,
    GetMailUser,
    GetAcceptedDomain,
}

const CMDS: [Cmd; 7] = [
    Cmd::GetMailbox,
    Cmd::SetMailbox,
    Cmd::GetUser,
    Cmd::NewMailUser,
    Cmd::SetMailUser,
    Cmd::GetMailUser,
    Cmd::GetAcceptedDomain,
];

/// The cmdlet names the simulator knows (canonical spelling).
pub(crate) fn known_cmdlets() -> Vec<&'static str> {
    CMDS.iter().map(|c| c.name()).collect()
}

const CUSTOM_ATTRIBUTES: [&str; 15] = [
    "CustomAttribute1",
    "CustomAttribute2",
    "CustomAttribute3",
    "CustomAttribute4",
    "CustomAttribute5",
    "CustomAttribute6",
    "CustomAttribute7",
    "CustomAttribute8",
    "CustomAttribute9",
    "CustomAttribute10",
    "CustomAttribute11",
    "CustomAttribute12",
    "CustomAttribute13",
    "CustomAttribute14",
    "CustomAttribute15",
];

const ACTION_PREFERENCES: [&str; 7] = ["Continue", "SilentlyContinue", "Stop", "Inquire", "Ignore", "Suspend", "Break"];

/// How a parameter's value is converted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ty {
    /// A non-empty scalar naming an object.
    Identity,
    /// A non-empty string.
    Text,
    /// A string; `$null` clears.
    TextOrNull,
    Bool,
    /// A switch: present means true; `-Switch:$false` is accepted.
    Switch,
    /// A positive number or "Unlimited".
    ResultSize,
    /// A ByteQuantifiedSize or "Unlimited".
    Quota,
    /// An SMTP address.
    Smtp,
    /// An SMTP address; `$null` clears.
    SmtpOrNull,
    Filter,
    ActionPreference,
    /// Accepted and ignored (variable names, buffers).
    Ignored,
}

#[derive(Debug, Clone, Copy)]
struct P {
    name: &'static str,
    ty: Ty,
    mandatory: bool,
}

const fn opt(name: &'static str, ty: Ty) -> P {
    P { name, ty, mandatory: false }
}
const fn req(name: &'static str, ty: Ty) -> P {
    P { name, ty, mandatory: true }
}

const COMMON: [P; 11] = [
    opt("Verbose", Ty::Switch),
    opt("Debug", Ty::Switch),
    opt("ErrorAction", Ty::ActionPreference),
    opt("WarningAction", Ty::ActionPreference),
    opt("InformationAction", Ty::ActionPreference),
    opt("ErrorVariable", Ty::Ignored),
    opt("WarningVariable", Ty::Ignored),
    opt("InformationVariable", Ty::Ignored),
    opt("OutVariable", Ty::Ignored),
    opt("OutBuffer", Ty::Ignored),
    opt("PipelineVariable", Ty::Ignored),
];

impl Cmd {
    fn name(self) -> &'static str {
        match self {
            Cmd::GetMailbox => "Get-Mailbox",
            Cmd::SetMailbox => "Set-Mailbox",
            Cmd::GetUser => "Get-User",
            Cmd::NewMailUser => "New-MailUser",
            Cmd::SetMailUser => "Set-MailUser",
            Cmd::GetMailUser => "Get-MailUser",
            Cmd::GetAcceptedDomain => "Get-AcceptedDomain",
        }
    }

    /// The .NET class implementing the cmdlet (named in Exchange's error ids).
    fn class(self) -> &'static str {
        match self {
            Cmd::GetMailbox => "Microsoft.Exchange.Management.RecipientTasks.GetMailbox",
            Cmd::SetMailbox => "Microsoft.Exchange.Management.RecipientTasks.SetMailbox",
            Cmd::GetUser => "Microsoft.Exchange.Management.RecipientTasks.GetUser",
            Cmd::NewMailUser => "Microsoft.Exchange.Management.RecipientTasks.NewMailUser",
            Cmd::SetMailUser => "Microsoft.Exchange.Management.RecipientTasks.SetMailUser",
            Cmd::GetMailUser => "Microsoft.Exchange.Management.RecipientTasks.GetMailUser",
            Cmd::GetAcceptedDomain => "Microsoft.Exchange.Management.SystemConfigurationTasks.GetAcceptedDomain",
        }
    }

    fn mutates(self) -> bool {
        matches!(self, Cmd::SetMailbox | Cmd::NewMailUser | Cmd::SetMailUser)
    }

    fn params(self) -> Vec<P> {
        let mut ps = match self {
            Cmd::GetMailbox | Cmd::GetUser | Cmd::GetMailUser => {
                vec![opt("Identity", Ty::Identity), opt("ResultSize", Ty::ResultSize), opt("Filter", Ty::Filter)]
            }
            Cmd::SetMailbox => {
                let mut v = vec![
                    req("Identity", Ty::Identity),
                    opt("DisplayName", Ty::Text),
                    opt("Office", Ty::TextOrNull),
                    opt("Department", Ty::TextOrNull),
                    opt("HiddenFromAddressListsEnabled", Ty::Bool),
                    opt("ForwardingSmtpAddress", Ty::SmtpOrNull),
                    opt("LitigationHoldEnabled", Ty::Bool),
                    opt("ProhibitSendQuota", Ty::Quota),
                    opt("ProhibitSendReceiveQuota", Ty::Quota),
                    opt("IssueWarningQuota", Ty::Quota),
                ];
                v.extend(CUSTOM_ATTRIBUTES.iter().map(|n| opt(n, Ty::TextOrNull)));
                v
            }
            Cmd::NewMailUser => vec![
                req("Name", Ty::Text),
                req("ExternalEmailAddress", Ty::Smtp),
                opt("Alias", Ty::Text),
                opt("DisplayName", Ty::Text),
                opt("FirstName", Ty::TextOrNull),
                opt("LastName", Ty::TextOrNull),
            ],
            Cmd::SetMailUser => {
                let mut v = vec![
                    req("Identity", Ty::Identity),
                    opt("HiddenFromAddressListsEnabled", Ty::Bool),
                    opt("DisplayName", Ty::Text),
                    opt("ExternalEmailAddress", Ty::Smtp),
                ];
                v.extend(CUSTOM_ATTRIBUTES.iter().map(|n| opt(n, Ty::TextOrNull)));
                v
            }
            Cmd::GetAcceptedDomain => vec![opt("Identity", Ty::Identity)],
        };
        if self.mutates() {
            ps.push(opt("Confirm", Ty::Switch));
            ps.push(opt("WhatIf", Ty::Switch));
        }
        ps.extend(COMMON);
        ps
    }

    /// The recipient kinds a Get-/Set- cmdlet of this name sees.
    fn kinds(self) -> &'static [RecipientKind] {
        match self {
            Cmd::GetMailbox | Cmd::SetMailbox => &[RecipientKind::Mailbox],
            Cmd::GetMailUser | Cmd::SetMailUser | Cmd::NewMailUser => &[RecipientKind::MailUser],
            Cmd::GetUser => &[RecipientKind::Mailbox, RecipientKind::MailUser],
            Cmd::GetAcceptedDomain => &[],
        }
    }

    fn render(self, r: &Recipient, domain: &str) -> PsObject {
        match self {
            Cmd::GetUser => r.user_object(domain),
            Cmd::GetMailUser | Cmd::SetMailUser | Cmd::NewMailUser => r.mail_user_object(domain),
            _ => r.mailbox_object(domain),
        }
    }
}

// ---- error records -------------------------------------------------------------------------

fn record(message: String, category: &str, fqeid: String, target: Option<String>) -> ErrorRecord {
    ErrorRecord { message, category: category.to_string(), fully_qualified_error_id: fqeid, target }
}

pub(crate) fn command_not_found(name: &str) -> ErrorRecord {
    record(
        format!(
            "The term '{name}' is not recognized as the name of a cmdlet, function, script file, or operable program. \
             Check the spelling of the name, or if a path was included, verify that the path is correct and try again."
        ),
        "ObjectNotFound",
        "CommandNotFoundException".to_string(),
        Some(name.to_string()),
    )
}

fn binding_error(cmd: Cmd, id: &str, category: &str, message: String, target: Option<String>) -> ErrorRecord {
    record(message, category, format!("{id},{}", cmd.name()), target)
}

fn invalid_value(cmd: Cmd, message: String) -> ErrorRecord {
    binding_error(cmd, "ParameterArgumentValidationError", "InvalidData", message, None)
}

/// An error written by an Exchange task, with the service's decorated error id.
fn exchange_error(cmd: Cmd, failure: &str, hex: &str, message: String, target: &str) -> ErrorRecord {
    let stamp = chrono::Utc::now().format("%-m/%-d/%Y %-I:%M:%S %p");
    let fqeid = format!(
        "[Server={},RequestId={},TimeStamp={stamp}] [FailureCategory=Cmdlet-{failure}] {hex},{}",
        world::SERVER,
        uuid::Uuid::new_v4(),
        cmd.class()
    );
    record(message, "NotSpecified", fqeid, Some(target.to_string()))
}

fn not_found(cmd: Cmd, identity: &str) -> ErrorRecord {
    exchange_error(
        cmd,
        "ManagementObjectNotFoundException",
        "8C7F9E1B",
        format!(
            "The operation couldn't be performed because object '{identity}' couldn't be found on '{}'.",
            world::DOMAIN_CONTROLLER
        ),
        identity,
    )
}

fn ambiguous(cmd: Cmd, identity: &str) -> ErrorRecord {
    exchange_error(
        cmd,
        "ManagementObjectAmbiguousException",
        "A1D3F6C2",
        format!("The operation couldn't be performed because '{identity}' matches multiple entries."),
        identity,
    )
}

// ---- binding -------------------------------------------------------------------------------

#[derive(Debug, Clone)]
enum Val {
    Str(String),
    OptStr(Option<String>),
    Bool(bool),
    /// ResultSize; None is Unlimited.
    Size(Option<u32>),
    /// Bytes; None is Unlimited.
    Quota(Option<u64>),
    Filter(Filter),
    Ignored,
}

#[derive(Debug)]
struct Bound {
    values: Vec<(&'static str, Val)>,
}

impl Bound {
    fn get(&self, name: &str) -> Option<&Val> {
        self.values.iter().find(|(n, _)| *n == name).map(|(_, v)| v)
    }
    fn str(&self, name: &str) -> Option<&str> {
        match self.get(name) {
            Some(Val::Str(s)) => Some(s),
            _ => None,
        }
    }
    fn switch(&self, name: &str) -> bool {
        matches!(self.get(name), Some(Val::Bool(true)))
    }
}

fn scalar_text(v: &PsValue) -> Option<String> {
    match v {
        PsValue::Null | PsValue::List(_) | PsValue::Dict(_) | PsValue::Object(_) => None,
        other => Some(other.display()),
    }
}

fn type_name(v: &PsValue) -> String {
    match v {
        PsValue::List(_) => "System.Object[]".into(),
        PsValue::Dict(_) => "System.Collections.Hashtable".into(),
        PsValue::Object(o) => {
            o.type_names.first().cloned().unwrap_or_else(|| "System.Management.Automation.PSObject".into())
        }
        _ => "System.Object".into(),
    }
}

fn to_bool(v: &PsValue) -> Option<bool> {
    match v {
        PsValue::Int32(i) => Some(*i != 0),
        PsValue::Int64(i) => Some(*i != 0),
        other => other.as_bool(),
    }
}

fn valid_smtp(s: &str) -> bool {
    let mut parts = s.split('@');
    let (Some(local), Some(domain), None) = (parts.next(), parts.next(), parts.next()) else {
        return false;
    };
    !local.is_empty()
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && !s.chars().any(|c| c.is_whitespace() || c == ',' || c == ';')
}

fn convert(cmd: Cmd, p: &P, v: &PsValue) -> Result<Val, ErrorRecord> {
    let name = p.name;
    let not_string = || {
        invalid_value(
            cmd,
            format!(
                "Cannot convert '{}' to the type 'System.String' required by parameter '{name}'. Specified method is not supported.",
                type_name(v)
            ),
        )
    };
    let null = || invalid_value(cmd, format!("Cannot bind argument to parameter '{name}' because it is null."));
    let smtp = |s: &str| -> Result<String, ErrorRecord> {
        let addr = s.trim();
        let addr = if addr.len() > 5 && addr[..5].eq_ignore_ascii_case("smtp:") { &addr[5..] } else { addr };
        if valid_smtp(addr) {
            Ok(addr.to_string())
        } else {
            Err(invalid_value(
                cmd,
                format!(
                    "Cannot process argument transformation on parameter '{name}'. Cannot convert value \"{s}\" to type \
                     \"Microsoft.Exchange.Data.SmtpAddress\". Error: \"The email address \"{s}\" isn't correct. Please use \
                     this format: user name, the @ sign, followed by the domain name. For example, tonysmith@contoso.com \
                     or tony.smith@contoso.com.\""
                ),
            ))
        }
    };
    match p.ty {
        Ty::Ignored => Ok(Val::Ignored),
        Ty::Identity | Ty::Text => match scalar_text(v) {
            Some(s) if s.trim().is_empty() => Err(invalid_value(
                cmd,
                format!("Cannot bind argument to parameter '{name}' because it is an empty string."),
            )),
            Some(s) => Ok(Val::Str(s.trim().to_string())),
            None if *v == PsValue::Null => Err(null()),
            None => Err(not_string()),
        },
        Ty::TextOrNull => match v {
            PsValue::Null => Ok(Val::OptStr(None)),
            _ => scalar_text(v).map(|s| Val::OptStr(Some(s))).ok_or_else(not_string),
        },
        Ty::Bool | Ty::Switch => {
            if p.ty == Ty::Switch && *v == PsValue::Null {
                return Ok(Val::Bool(true));
            }
            to_bool(v).map(Val::Bool).ok_or_else(|| {
                invalid_value(
                    cmd,
                    format!(
                        "Cannot process argument transformation on parameter '{name}'. Cannot convert value \"{}\" to type \
                         \"System.Boolean\". Boolean parameters accept only Boolean values and numbers, such as $True, \
                         $False, 1 or 0.",
                        v.display()
                    ),
                )
            })
        }
        Ty::ResultSize => {
            let bad = || {
                invalid_value(
                    cmd,
                    format!(
                        "Cannot process argument transformation on parameter '{name}'. Cannot convert value \"{}\" to type \
                         \"Microsoft.Exchange.Data.Unlimited`1[System.UInt32]\". Error: \"The value must be a positive \
                         number or 'Unlimited'.\"",
                        v.display()
                    ),
                )
            };
            if let Some(s) = v.as_str() {
                if s.trim().eq_ignore_ascii_case("unlimited") {
                    return Ok(Val::Size(None));
                }
            }
            match v.as_i64() {
                Some(n) if n >= 1 => Ok(Val::Size(Some(n.min(u32::MAX as i64) as u32))),
                _ => Err(bad()),
            }
        }
        Ty::Quota => {
            let text = match v {
                PsValue::Int32(_) | PsValue::Int64(_) | PsValue::String(_) => v.display(),
                PsValue::Null => return Err(null()),
                _ => return Err(not_string()),
            };
            parse_quota(&text).map(Val::Quota).map_err(|()| {
                invalid_value(
                    cmd,
                    format!(
                        "Cannot process argument transformation on parameter '{name}'. Cannot convert value \"{text}\" to \
                         type \"Microsoft.Exchange.Data.Unlimited`1[Microsoft.Exchange.Data.ByteQuantifiedSize]\". Error: \
                         \"The value must be a size such as 10GB, 500MB or a number of bytes, or 'Unlimited'.\""
                    ),
                )
            })
        }
        Ty::Smtp => match scalar_text(v) {
            Some(s) => smtp(&s).map(Val::Str),
            None if *v == PsValue::Null => Err(null()),
            None => Err(not_string()),
        },
        Ty::SmtpOrNull => match v {
            PsValue::Null => Ok(Val::OptStr(None)),
            PsValue::String(s) if s.trim().is_empty() => Ok(Val::OptStr(None)),
            _ => match scalar_text(v) {
                Some(s) => smtp(&s).map(|a| Val::OptStr(Some(a))),
                None => Err(not_string()),
            },
        },
        Ty::Filter => {
            let text = match v {
                PsValue::Null => return Err(null()),
                _ => scalar_text(v).ok_or_else(not_string)?,
            };
            let template = cmd.render(&Recipient::template(cmd.kinds()[0]), "template.invalid");
            Filter::parse(&text, &template).map(Val::Filter).map_err(|why| {
                invalid_value(
                    cmd,
                    format!("Cannot bind parameter 'Filter' to the target. Exception setting \"Filter\": \"{why}\""),
                )
            })
        }
        Ty::ActionPreference => {
            let s = scalar_text(v).unwrap_or_default();
            match ACTION_PREFERENCES.iter().find(|a| a.eq_ignore_ascii_case(s.trim())) {
                Some(a) => Ok(Val::Str(a.to_string())),
                None => Err(invalid_value(
                    cmd,
                    format!(
                        "Cannot bind parameter '{name}'. Cannot convert value \"{s}\" to type \
                         \"System.Management.Automation.ActionPreference\". Error: \"Unable to match the identifier name \
                         {s} to a valid enumerator name. Specify one of the following enumerator names and try again:\n{}\"",
                        ACTION_PREFERENCES.join(", ")
                    ),
                )),
            }
        }
    }
}

fn bind(cmd: Cmd, params: &[(String, PsValue)]) -> Result<Bound, ErrorRecord> {
    let specs = cmd.params();
    let mut values: Vec<(&'static str, Val)> = Vec::new();
    for (raw, value) in params {
        let given = raw.trim().trim_start_matches('-').trim_end_matches(':');
        let spec = match specs.iter().find(|p| p.name.eq_ignore_ascii_case(given)) {
            Some(p) => p,
            None => {
                let lower = given.to_ascii_lowercase();
                let candidates: Vec<&P> = if given.is_empty() {
                    vec![]
                } else {
                    specs.iter().filter(|p| p.name.to_ascii_lowercase().starts_with(&lower)).collect()
                };
                match candidates.len() {
                    1 => candidates[0],
                    0 => {
                        return Err(binding_error(
                            cmd,
                            "NamedParameterNotFound",
                            "InvalidArgument",
                            format!("A parameter cannot be found that matches parameter name '{given}'."),
                            None,
                        ))
                    }
                    _ => {
                        let list: Vec<String> = candidates.iter().map(|p| format!("-{}", p.name)).collect();
                        return Err(binding_error(
                            cmd,
                            "AmbiguousParameter",
                            "InvalidArgument",
                            format!(
                                "Parameter cannot be processed because the parameter name '{given}' is ambiguous. \
                                 Possible matches include: {}.",
                                list.join(" ")
                            ),
                            None,
                        ));
                    }
                }
            }
        };
        if values.iter().any(|(n, _)| *n == spec.name) {
            return Err(binding_error(
                cmd,
                "ParameterAlreadyBound",
                "InvalidArgument",
                format!(
                    "Cannot bind parameter because parameter '{}' is specified more than once. To provide multiple values \
                     to parameters that can accept multiple values, use the array syntax. For example, \"-parameter \
                     value1,value2,value3\".",
                    spec.name
                ),
                None,
            ));
        }
        values.push((spec.name, convert(cmd, spec, value)?));
    }
    let missing: Vec<&str> =
        specs.iter().filter(|p| p.mandatory && !values.iter().any(|(n, _)| *n == p.name)).map(|p| p.name).collect();
    if !missing.is_empty() {
        return Err(binding_error(
            cmd,
            "MissingMandatoryParameter",
            "InvalidArgument",
            format!(
                "Cannot process command because of one or more missing mandatory parameters: {}.",
                missing.join(" ")
            ),
            None,
        ));
    }
    Ok(Bound { values })
}

// ---- filters -------------------------------------------------------------------------------

const FILTER_HELP: &str = "The simulator supports only clauses of the form <Property> -eq|-ne|-like|-notlike <value> \
                           joined by -and, where <value> is quoted text, $true, $false or $null.";

#[derive(Debug, Clone, Copy, PartialEq)]
enum Op {
    Eq,
    Ne,
    Like,
    NotLike,
}

#[derive(Debug, Clone, PartialEq)]
enum FilterValue {
    Null,
    Bool(bool),
    Text(String),
}

#[derive(Debug, Clone)]
struct Clause {
    property: String,
    op: Op,
    value: FilterValue,
}

/// A small subset of OPATH: `Property -op value [-and …]`.
#[derive(Debug, Clone)]
struct Filter {
    clauses: Vec<Clause>,
}

impl Filter {
    fn parse(text: &str, template: &PsObject) -> Result<Filter, String> {
        let syntax = |pos: usize| {
            format!(
                "Invalid filter syntax. For a description of the filter parameter syntax see the command help.\n\"{text}\" \
                 at position {}. {FILTER_HELP}",
                pos + 1
            )
        };
        let mut body = text.trim();
        if body.starts_with('{') && body.ends_with('}') && body.len() >= 2 {
            body = body[1..body.len() - 1].trim();
        }
        // Tokens with their start offsets; quoted tokens keep a marker.
        let mut tokens: Vec<(usize, String, bool)> = Vec::new();
        let chars: Vec<(usize, char)> = body.char_indices().collect();
        let mut i = 0;
        while i < chars.len() {
            let (pos, c) = chars[i];
            if c.is_whitespace() {
                i += 1;
            } else if c == '\'' || c == '"' {
                let mut s = String::new();
                i += 1;
                loop {
                    match chars.get(i) {
                        None => return Err(syntax(pos)),
                        Some(&(_, q)) if q == c => {
                            if chars.get(i + 1).map(|&(_, n)| n) == Some(c) {
                                s.push(c);
                                i += 2;
                            } else {
                                i += 1;
                                break;
                            }
                        }
                        Some(&(_, ch)) => {
                            s.push(ch);
                            i += 1;
                        }
                    }
                }
                tokens.push((pos, s, true));
            } else {
                let mut s = String::new();
                while let Some(&(_, ch)) = chars.get(i) {
                    if ch.is_whitespace() {
                        break;
                    }
                    s.push(ch);
                    i += 1;
                }
                tokens.push((pos, s, false));
            }
        }
        let mut clauses = Vec::new();
        let mut t = tokens.into_iter().peekable();
        loop {
            let Some((pos, property, quoted)) = t.next() else {
                return Err(syntax(body.len()));
            };
            if quoted || !property.chars().all(|c| c.is_ascii_alphanumeric()) {
                return Err(syntax(pos));
            }
            let Some(canonical) = template.properties.iter().find(|(n, _)| n.eq_ignore_ascii_case(&property)) else {
                return Err(format!(
                    "'{property}' is not a recognized filterable property. For more information about filterable \
                     properties, see the command help."
                ));
            };
            let Some((op_pos, op, _)) = t.next() else {
                return Err(syntax(body.len()));
            };
            let op = match op.to_ascii_lowercase().as_str() {
                "-eq" => Op::Eq,
                "-ne" => Op::Ne,
                "-like" => Op::Like,
                "-notlike" => Op::NotLike,
                _ => return Err(syntax(op_pos)),
            };
            let Some((_, raw, quoted)) = t.next() else {
                return Err(syntax(body.len()));
            };
            let value = match (quoted, raw.to_ascii_lowercase().as_str()) {
                (false, "$null") => FilterValue::Null,
                (false, "$true") => FilterValue::Bool(true),
                (false, "$false") => FilterValue::Bool(false),
                _ => FilterValue::Text(raw),
            };
            clauses.push(Clause { property: canonical.0.clone(), op, value });
            match t.next() {
                None => break,
                Some((_, and, false)) if and.eq_ignore_ascii_case("-and") => continue,
                Some((pos, _, _)) => return Err(syntax(pos)),
            }
        }
        Ok(Filter { clauses })
    }

    fn matches(&self, obj: &PsObject) -> bool {
        self.clauses.iter().all(|c| {
            let v = obj.get(&c.property).unwrap_or(&PsValue::Null);
            let positive = match (&c.value, c.op) {
                (FilterValue::Null, _) => match v {
                    PsValue::Null => true,
                    PsValue::String(s) => s.is_empty(),
                    PsValue::List(items) => items.is_empty(),
                    _ => false,
                },
                (FilterValue::Bool(b), _) => to_bool(v) == Some(*b),
                (FilterValue::Text(want), Op::Eq | Op::Ne) => values_of(v).iter().any(|s| s.eq_ignore_ascii_case(want)),
                (FilterValue::Text(want), _) => values_of(v).iter().any(|s| wildcard(want, s)),
            };
            match c.op {
                Op::Eq | Op::Like => positive,
                Op::Ne | Op::NotLike => !positive,
            }
        })
    }
}

fn values_of(v: &PsValue) -> Vec<String> {
    match v {
        PsValue::List(items) => items.iter().map(PsValue::display).collect(),
        other => vec![other.display()],
    }
}

/// Case-insensitive `*` / `?` wildcard match.
fn wildcard(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.to_lowercase().chars().collect();
    let t: Vec<char> = text.to_lowercase().chars().collect();
    let (mut pi, mut ti, mut star, mut mark) = (0, 0, None, 0);
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == '*' {
        pi += 1;
    }
    pi == p.len()
}

// ---- execution -----------------------------------------------------------------------------

/// Runs one command against a tenant's directory.
pub(crate) fn invoke(data: &mut TenantData, cmdlet: &str, params: &[(String, PsValue)]) -> Outcome {
    let name = cmdlet.trim();
    let Some(cmd) = CMDS.iter().copied().find(|c| c.name().eq_ignore_ascii_case(name)) else {
        return Outcome::NotExecuted(command_not_found(name));
    };
    let bound = match bind(cmd, params) {
        Ok(b) => b,
        Err(record) => return Outcome::NotExecuted(record),
    };
    let mut out = CommandOutput::default();
    match cmd {
        Cmd::GetMailbox | Cmd::GetUser | Cmd::GetMailUser => get_recipients(cmd, &bound, data, &mut out),
        Cmd::SetMailbox | Cmd::SetMailUser => set_recipient(cmd, &bound, data, &mut out),
        Cmd::NewMailUser => create_mail_user(cmd, &bound, data, &mut out),
        Cmd::GetAcceptedDomain => get_accepted_domains(cmd, &bound, data, &mut out),
    }
    match bound.str("ErrorAction") {
        Some("Stop") if !out.errors.is_empty() => return Outcome::Executed(Err(out.errors.remove(0))),
        Some("SilentlyContinue" | "Ignore") => out.errors.clear(),
        _ => {}
    }
    if matches!(bound.str("WarningAction"), Some("SilentlyContinue" | "Ignore")) {
        out.warnings.clear();
    }
    Outcome::Executed(Ok(out))
}

fn result_size_warning(n: u32) -> String {
    format!(
        "By default, only the first {n} items are returned. Use the ResultSize parameter to specify the number of items \
         returned. To return all items, specify \"-ResultSize Unlimited\". Be aware that, depending on the actual number \
         of items, returning all items can take a long time and consume a large amount of memory. Also, we don't \
         recommend storing the results in a variable. Instead, pipe the results to another task or script to perform \
         batch changes."
    )
}

/// The one object an -Identity names, or the error Exchange writes.
fn resolve_one(cmd: Cmd, data: &TenantData, identity: &str) -> Result<usize, ErrorRecord> {
    let hits = data.find(cmd.kinds(), identity);
    match hits.as_slice() {
        [one] => Ok(*one),
        [] => Err(not_found(cmd, identity)),
        _ => Err(ambiguous(cmd, identity)),
    }
}

fn get_recipients(cmd: Cmd, b: &Bound, data: &TenantData, out: &mut CommandOutput) {
    let filter = match b.get("Filter") {
        Some(Val::Filter(f)) => Some(f),
        _ => None,
    };
    let keep = |o: &PsObject| filter.is_none_or(|f| f.matches(o));
    if let Some(identity) = b.str("Identity") {
        match resolve_one(cmd, data, identity) {
            Ok(i) => {
                let obj = cmd.render(&data.recipients[i], &data.domain);
                if keep(&obj) {
                    out.objects.push(PsValue::Object(obj));
                }
            }
            Err(e) => out.errors.push(e),
        }
        return;
    }
    let limit = match b.get("ResultSize") {
        Some(Val::Size(n)) => *n,
        _ => Some(1000),
    };
    let kinds = cmd.kinds();
    for r in data.recipients.iter().filter(|r| kinds.contains(&r.kind)) {
        let obj = cmd.render(r, &data.domain);
        if !keep(&obj) {
            continue;
        }
        if let Some(limit) = limit {
            if out.objects.len() >= limit as usize {
                out.warnings.push(result_size_warning(limit));
                break;
            }
        }
        out.objects.push(PsValue::Object(obj));
    }
}

fn set_text(field: &mut String, value: &str) -> bool {
    if field != value {
        *field = value.to_string();
        true
    } else {
        false
    }
}

fn set_value<T: PartialEq + Clone>(field: &mut T, value: &T) -> bool {
    if field != value {
        *field = value.clone();
        true
    } else {
        false
    }
}

/// Applies one bound parameter to a recipient; true when something changed.
fn apply(r: &mut Recipient, name: &str, val: &Val) -> bool {
    if let Some(i) = CUSTOM_ATTRIBUTES.iter().position(|n| *n == name) {
        let Val::OptStr(v) = val else { return false };
        return set_text(&mut r.custom[i], v.as_deref().unwrap_or(""));
    }
    match (name, val) {
        ("DisplayName", Val::Str(s)) => set_text(&mut r.display_name, s),
        ("Office", Val::OptStr(s)) => set_text(&mut r.office, s.as_deref().unwrap_or("")),
        ("Department", Val::OptStr(s)) => set_text(&mut r.department, s.as_deref().unwrap_or("")),
        ("HiddenFromAddressListsEnabled", Val::Bool(b)) => set_value(&mut r.hidden, b),
        ("LitigationHoldEnabled", Val::Bool(b)) => set_value(&mut r.litigation_hold, b),
        ("ForwardingSmtpAddress", Val::OptStr(a)) => {
            set_value(&mut r.forwarding_smtp, &a.as_ref().map(|a| format!("smtp:{a}")))
        }
        ("ExternalEmailAddress", Val::Str(a)) => set_value(&mut r.external_email, &Some(format!("SMTP:{a}"))),
        ("ProhibitSendQuota", Val::Quota(q)) => set_value(&mut r.prohibit_send_quota, q),
        ("ProhibitSendReceiveQuota", Val::Quota(q)) => set_value(&mut r.prohibit_send_receive_quota, q),
        ("IssueWarningQuota", Val::Quota(q)) => set_value(&mut r.issue_warning_quota, q),
        _ => false,
    }
}

fn now_text() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, false)
}

fn set_recipient(cmd: Cmd, b: &Bound, data: &mut TenantData, out: &mut CommandOutput) {
    let identity = b.str("Identity").unwrap_or_default();
    let index = match resolve_one(cmd, data, identity) {
        Ok(i) => i,
        Err(e) => return out.errors.push(e),
    };
    let mut updated = data.recipients[index].clone();
    let mut changed = false;
    for (name, val) in &b.values {
        changed |= apply(&mut updated, name, val);
    }
    if !changed {
        out.warnings.push(format!(
            "The command completed successfully but no settings of '{}' have been modified.",
            updated.name
        ));
    } else if !b.switch("WhatIf") {
        updated.when_changed = now_text();
        data.recipients[index] = updated;
    }
}

fn create_mail_user(cmd: Cmd, b: &Bound, data: &mut TenantData, out: &mut CommandOutput) {
    let name = b.str("Name").unwrap_or_default();
    let external = b.str("ExternalEmailAddress").unwrap_or_default();
    let alias = match b.str("Alias") {
        Some(a) => a.to_string(),
        None => {
            let a: String =
                name.chars().filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')).collect();
            if a.is_empty() {
                "mailuser".to_string()
            } else {
                a
            }
        }
    };
    let opt = |n: &str| match b.get(n) {
        Some(Val::OptStr(Some(s))) => s.clone(),
        _ => String::new(),
    };
    if data.recipients.iter().any(|r| r.name.eq_ignore_ascii_case(name)) {
        return out.errors.push(exchange_error(
            cmd,
            "ADObjectAlreadyExistsException",
            "E2B1C9D4",
            format!("The name \"{name}\" is already being used. Please try another name."),
            name,
        ));
    }
    let smtp = format!("{alias}@{}", data.domain);
    if let Some(other) = data.recipients.iter().find(|r| r.primary_smtp.eq_ignore_ascii_case(&smtp)) {
        return out.errors.push(exchange_error(
            cmd,
            "ProxyAddressExistsException",
            "5F1D8A37",
            format!(
                "The proxy address \"SMTP:{smtp}\" is already being used by the proxy addresses or LegacyExchangeDN of \
                 \"{}\". Please choose another proxy address.",
                other.name
            ),
            name,
        ));
    }
    let display = b.str("DisplayName").unwrap_or(name);
    let user = new_mail_user(&data.domain, name, &alias, display, &opt("FirstName"), &opt("LastName"), external);
    if b.switch("WhatIf") {
        return;
    }
    out.objects.push(PsValue::Object(user.mail_user_object(&data.domain)));
    data.recipients.push(user);
}

fn get_accepted_domains(cmd: Cmd, b: &Bound, data: &TenantData, out: &mut CommandOutput) {
    let identity = b.str("Identity");
    let found: Vec<_> = data.accepted_domains.iter().filter(|d| identity.is_none_or(|id| d.matches(id))).collect();
    if let (Some(id), true) = (identity, found.is_empty()) {
        return out.errors.push(not_found(cmd, id));
    }
    out.objects.extend(found.into_iter().map(|d| PsValue::Object(d.object(&data.domain))));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards() {
        assert!(wildcard("user0*", "USER001"));
        assert!(wildcard("*@contoso*", "a@contoso.com"));
        assert!(wildcard("u?er*1", "user001"));
        assert!(!wildcard("user0*2", "user001"));
    }

    #[test]
    fn filters_parse_and_reject() {
        let t = Recipient::template(RecipientKind::Mailbox).mailbox_object("x");
        let f = Filter::parse("{Department -eq 'Sales' -and Name -like 'user*'}", &t).unwrap();
        assert_eq!(f.clauses.len(), 2);
        assert_eq!(f.clauses[0].property, "Department");
        assert!(Filter::parse("Nope -eq 'x'", &t).unwrap_err().contains("'Nope' is not a recognized"));
        assert!(Filter::parse("Name -gt 'x'", &t).unwrap_err().contains("Invalid filter syntax"));
        assert!(Filter::parse("Name -eq 'x' -or Alias -eq 'y'", &t).unwrap_err().contains("position"));
        assert!(Filter::parse("Name -eq 'x", &t).is_err());
        let f =
            Filter::parse("ForwardingSmtpAddress -eq $null -and HiddenFromAddressListsEnabled -eq $false", &t).unwrap();
        assert!(f.matches(&t));
    }
}
