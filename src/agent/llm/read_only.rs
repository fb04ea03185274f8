//! Whether a statement from the model only reads, checked before `run_sql` sends it.
//!
//! The statement is parsed with `sqlparser`'s Databricks dialect and accepted only when it
//! is exactly one query (`SELECT`, `WITH … SELECT`, `VALUES`, set operations), a `SHOW`
//! (every form only reads, `SHOW CREATE TABLE` included), `DESCRIBE`/`DESC` of a table,
//! or `EXPLAIN` of a query, with no data-modifying statement anywhere inside it and no
//! call to a function that reaches outside the warehouse (`REFUSED_FUNCTIONS`, and every
//! `ai_…` function). What is sent is the checked text itself, trimmed and without its one
//! trailing `;`, never a re-rendering of the parse.
//!
//! Databricks does not parse with `sqlparser`: it uses Spark's own lexer. Where the two
//! could split the same text into different tokens (`refuse_ambiguous_text`,
//! `refuse_ambiguous_tokens`), the statement is refused rather than guessed at, so that
//! no comment or string in the checked reading can hide a second statement in Databricks'
//! reading.
//!
//! This is a guard against a model that was talked into writing, not the security
//! boundary: the statement runs with the person's own token, so their Unity Catalog
//! grants decide what it may touch. Functions the person may call that are not built in
//! (their own SQL or Python functions) are not looked into.

use std::ops::ControlFlow;

use sqlparser::ast::{Select, Statement, Visit, Visitor};
use sqlparser::dialect::DatabricksDialect;
use sqlparser::keywords::Keyword;
use sqlparser::parser::Parser;
use sqlparser::tokenizer::{Location, Token, TokenWithSpan, Tokenizer, Whitespace};

/// Longest statement checked, in bytes: a question's query is far shorter, and the bound
/// keeps the work of tokenising, parsing and walking one statement small.
const MAX_STATEMENT_BYTES: usize = 16 * 1024;

/// Built-in functions refused anywhere in a statement (also qualified, as
/// `system.builtin.…`, and in any case), each with why. Besides these, every `ai_…`
/// function is refused: each calls a model, billed per row, and `ai_query` can reach any
/// serving endpoint, external models included.
const REFUSED_FUNCTIONS: &[(&str, &str)] = &[
    ("http_request", "it calls out to a URL, which can send data anywhere"),
    (
        "remote_query",
        "it runs a query, possibly a write, on an external database",
    ),
    (
        "read_files",
        "it reads raw files from cloud storage, outside table grants",
    ),
    ("read_kafka", "it reads from a Kafka cluster, outside the warehouse"),
    ("read_kinesis", "it reads from a Kinesis stream, outside the warehouse"),
    (
        "read_pubsub",
        "it reads from a Pub/Sub subscription, outside the warehouse",
    ),
    ("read_pulsar", "it reads from a Pulsar topic, outside the warehouse"),
    (
        "read_eventhubs",
        "it reads from an Event Hubs stream, outside the warehouse",
    ),
    ("read_statestore", "it reads a streaming checkpoint's files"),
    ("read_state_metadata", "it reads a streaming checkpoint's files"),
    ("cloud_files_state", "it reads a streaming checkpoint's files"),
    ("secret", "it returns a secret's value"),
    ("try_secret", "it returns a secret's value"),
    ("list_secrets", "it lists the secrets the person may read"),
    ("vector_search", "it queries a vector search endpoint, billed per call"),
    ("java_method", "it calls a Java method by name"),
    ("reflect", "it calls a Java method by name"),
    ("try_reflect", "it calls a Java method by name"),
    (
        "from_avro",
        "its options can name a schema registry, which it then calls",
    ),
    ("to_avro", "its options can name a schema registry, which it then calls"),
    (
        "from_protobuf",
        "its options can name a schema registry, which it then calls",
    ),
    (
        "to_protobuf",
        "its options can name a schema registry, which it then calls",
    ),
    (
        "identifier",
        "it names a function or table from a string, which hides what is called",
    ),
];

/// The statement to send when `statement` is one read-only statement, or why not (in plain
/// words, for the model): trimmed, with one trailing `;` dropped.
pub fn check(statement: &str) -> Result<&str, String> {
    if statement.len() > MAX_STATEMENT_BYTES {
        return Err(format!("it is longer than {MAX_STATEMENT_BYTES} bytes"));
    }
    refuse_ambiguous_text(statement)?;
    let dialect = DatabricksDialect {};
    let mut tokens = Tokenizer::new(&dialect, statement)
        .tokenize_with_location()
        .map_err(|error| format!("it could not be read as SQL ({error})"))?;
    let end = statement_end(statement, &tokens)?;
    refuse_ambiguous_tokens(&tokens)?;
    refuse_calls(&tokens)?;
    drop_describe_table_keyword(&mut tokens);
    let parsed = Parser::new(&dialect)
        .with_tokens_with_locations(tokens)
        .parse_statements()
        .map_err(|error| format!("it could not be parsed ({error})"))?;
    let [parsed] = parsed.as_slice() else {
        return Err(if parsed.is_empty() {
            "it is empty".into()
        } else {
            "it holds more than one statement".into()
        });
    };
    if let ControlFlow::Break(why) = parsed.visit(&mut ReadOnly { statements: 0 }) {
        return Err(why);
    }
    Ok(statement[..end].trim())
}

/// Refuses text that Databricks' lexer (Spark's `SqlBaseLexer`) and `sqlparser`'s would
/// split differently, in a way that could hide SQL from the check:
///
/// - A line break other than `\n` or `\r\n`, and any other control character but a tab.
///   Spark ends a `--` comment at a bare `\r` and `sqlparser` does not, so in
///   `SELECT 1 --\rDROP …` the check would see a comment where Databricks sees a statement.
///   Vertical tab, form feed, U+0085, U+2028 and U+2029 end lines for some tokenizers and
///   not for others; no query needs them, so they are refused wherever they are, strings
///   included.
/// - A backslash before a line break: Spark carries a `--` comment on to the next line
///   after `\`, and `sqlparser` does not.
/// - `/*+`: Spark reads a hint's body as SQL (with its own strings and comments), and
///   `sqlparser` reads it as a comment.
///
/// Unicode spaces (U+00A0, U+3000, …) are left alone: both lexers take them for
/// whitespace between tokens. Other differences show only in tokens; see
/// [`refuse_ambiguous_tokens`].
fn refuse_ambiguous_text(statement: &str) -> Result<(), String> {
    let mut chars = statement.chars().peekable();
    while let Some(c) = chars.next() {
        let next = chars.peek().copied();
        let line_break = c == '\n' || (c == '\r' && next == Some('\n'));
        if !line_break && c != '\t' && (c.is_control() || c == '\u{2028}' || c == '\u{2029}') {
            return Err(format!(
                "it holds the character U+{:04X}; use plain spaces and newlines",
                u32::from(c)
            ));
        }
        if c == '\\' && matches!(next, Some('\n' | '\r')) {
            return Err("a line ends in a backslash".into());
        }
    }
    if statement.contains("/*+") {
        return Err("it holds a hint (/*+ … */)".into());
    }
    Ok(())
}

/// Refuses tokens that Spark would have read differently:
///
/// - `r'…'` and `r"…"`: to Spark a raw string, in which a backslash escapes nothing; to
///   `sqlparser`'s Databricks dialect the name `r` and then a string in which it does, so
///   the two would end the string in different places.
/// - A name directly followed by `:/` (`s3://…`): Spark reads `scheme://…` as one
///   identifier, a path, in which a `--` or a quote starts nothing.
/// - Any string but `'…'`, `"…"` and `X'…'`: `sqlparser` also knows `$$…$$`, `N'…'` and
///   others, which Spark's lexer does not, so a string to the check could be
///   code to Databricks.
fn refuse_ambiguous_tokens(tokens: &[TokenWithSpan]) -> Result<(), String> {
    let touching = |a: &TokenWithSpan, b: &TokenWithSpan| a.span.end == b.span.start;
    for (i, token) in tokens.iter().enumerate() {
        if matches!(
            token.token,
            Token::TripleSingleQuotedString(_)
                | Token::TripleDoubleQuotedString(_)
                | Token::DollarQuotedString(_)
                | Token::SingleQuotedByteStringLiteral(_)
                | Token::DoubleQuotedByteStringLiteral(_)
                | Token::TripleSingleQuotedByteStringLiteral(_)
                | Token::TripleDoubleQuotedByteStringLiteral(_)
                | Token::SingleQuotedRawStringLiteral(_)
                | Token::DoubleQuotedRawStringLiteral(_)
                | Token::TripleSingleQuotedRawStringLiteral(_)
                | Token::TripleDoubleQuotedRawStringLiteral(_)
                | Token::NationalStringLiteral(_)
                | Token::QuoteDelimitedStringLiteral(_)
                | Token::NationalQuoteDelimitedStringLiteral(_)
                | Token::EscapedStringLiteral(_)
                | Token::UnicodeStringLiteral(_)
        ) {
            return Err("it holds a kind of string Databricks does not have; use '…'".into());
        }
        let Token::Word(word) = &token.token else {
            continue;
        };
        let next = tokens.get(i + 1).filter(|next| touching(token, next));
        let Some(next) = next else {
            continue;
        };
        let raw = word.quote_style.is_none() && word.value.eq_ignore_ascii_case("r");
        if raw && matches!(next.token, Token::SingleQuotedString(_) | Token::DoubleQuotedString(_)) {
            return Err("it holds a raw string (r'…')".into());
        }
        let slash = tokens.get(i + 2).filter(|slash| touching(next, slash));
        if next.token == Token::Colon && slash.is_some_and(|slash| slash.token == Token::Div) {
            return Err("it names a path (scheme://…); query tables by name".into());
        }
    }
    Ok(())
}

/// The byte offset where the statement ends: at its one `;` when that is followed by
/// nothing but whitespace and comments, else at the end of the text.
fn statement_end(statement: &str, tokens: &[TokenWithSpan]) -> Result<usize, String> {
    let mut semicolons = tokens.iter().filter(|t| t.token == Token::SemiColon);
    let Some(semicolon) = semicolons.next() else {
        return Ok(statement.len());
    };
    let last = tokens
        .iter()
        .rev()
        .find(|t| !matches!(t.token, Token::Whitespace(_) | Token::EOF));
    if semicolons.next().is_some() || last != Some(semicolon) {
        return Err("it holds more than one statement".into());
    }
    Ok(byte_offset(statement, semicolon.span.start))
}

/// The byte offset in `text` of a tokenizer location (1-based line and character column).
fn byte_offset(text: &str, location: Location) -> usize {
    let line_start: usize = text
        .split_inclusive('\n')
        .take(location.line as usize - 1)
        .map(str::len)
        .sum();
    let line = &text[line_start..];
    line_start
        + line
            .char_indices()
            .nth(location.column as usize - 1)
            .map_or(line.len(), |(i, _)| i)
}

/// Refuses a call of a [`REFUSED_FUNCTIONS`] or `ai_…` function: a name (plain, backquoted
/// or the last part of a qualified one) followed by `(`. Working on tokens rather than on
/// the parse finds every call, whatever node of the syntax tree it would sit in (a
/// lateral view, a table function, a pipe `CALL`, a method call, …).
fn refuse_calls(tokens: &[TokenWithSpan]) -> Result<(), String> {
    let mut code = tokens
        .iter()
        .filter(|t| !matches!(t.token, Token::Whitespace(_)))
        .peekable();
    while let Some(token) = code.next() {
        let Token::Word(word) = &token.token else {
            continue;
        };
        if code.peek().map(|t| &t.token) != Some(&Token::LParen) {
            continue;
        }
        let name = word.value.to_ascii_lowercase();
        if let Some((_, why)) = REFUSED_FUNCTIONS.iter().find(|(refused, _)| *refused == name) {
            return Err(format!("it calls {name}: {why}"));
        }
        if name.starts_with("ai_") {
            return Err(format!(
                "it calls {name}: AI functions call a model, billed per row, and can reach \
                 outside services"
            ));
        }
    }
    Ok(())
}

/// Removes the `TABLE` of `DESCRIBE TABLE t` / `DESC TABLE t` from the tokens to parse:
/// Databricks allows the keyword, and `sqlparser`'s Databricks dialect does not (it would
/// read `TABLE` as the table's name). Only the parse is changed; the text sent keeps it.
fn drop_describe_table_keyword(tokens: &mut [TokenWithSpan]) {
    let mut code = tokens.iter_mut().filter(|t| !matches!(t.token, Token::Whitespace(_)));
    let describe = code
        .next()
        .is_some_and(|t| matches!(&t.token, Token::Word(w) if matches!(w.keyword, Keyword::DESCRIBE | Keyword::DESC)));
    if let Some(table) = code.next().filter(|_| describe)
        && matches!(&table.token, Token::Word(w) if w.keyword == Keyword::TABLE && w.quote_style.is_none())
    {
        table.token = Token::Whitespace(Whitespace::Space);
    }
}

/// Walks a parsed statement and breaks with why it does not only read.
struct ReadOnly {
    /// Statements seen so far: the first is the one sent, later ones are inside it.
    statements: usize,
}

impl Visitor for ReadOnly {
    type Break = String;

    /// Every statement: the one sent, and any inside it, which must be a query: the one
    /// an `EXPLAIN` holds, or a data-modifying CTE or subquery, which comes as a nested
    /// `INSERT`, `UPDATE`, `DELETE` or `MERGE`. Every `SHOW` passes: Databricks has none
    /// that writes, and the forms `sqlparser` does not know (`SHOW GRANTS`,
    /// `SHOW PARTITIONS`, …) come as a `ShowVariable`.
    fn pre_visit_statement(&mut self, statement: &Statement) -> ControlFlow<String> {
        self.statements += 1;
        let inside = self.statements > 1;
        let read = match statement {
            Statement::Query(_) => true,
            _ if inside => false,
            // EXPLAIN ANALYZE runs the statement, in the dialects that have it.
            Statement::Explain { analyze, .. } => !analyze,
            Statement::ExplainTable { .. }
            | Statement::ShowFunctions { .. }
            | Statement::ShowVariable { .. }
            | Statement::ShowStatus { .. }
            | Statement::ShowVariables { .. }
            | Statement::ShowCreate { .. }
            | Statement::ShowColumns { .. }
            | Statement::ShowCatalogs { .. }
            | Statement::ShowDatabases { .. }
            | Statement::ShowSchemas { .. }
            | Statement::ShowCharset(_)
            | Statement::ShowObjects(_)
            | Statement::ShowTables { .. }
            | Statement::ShowViews { .. }
            | Statement::ShowCollation { .. } => true,
            _ => false,
        };
        if read {
            return ControlFlow::Continue(());
        }
        let sql = statement.to_string();
        let mut keyword = sql.split_whitespace().next().unwrap_or_default().to_owned();
        if matches!(statement, Statement::Explain { analyze: true, .. }) {
            keyword.push_str(" ANALYZE");
        }
        let article = if keyword.starts_with(['A', 'E', 'I', 'O', 'U']) {
            "an"
        } else {
            "a"
        };
        let verb = if inside { "contains" } else { "is" };
        ControlFlow::Break(format!("it {verb} {article} {keyword} statement"))
    }

    fn pre_visit_select(&mut self, select: &Select) -> ControlFlow<String> {
        if select.into.is_some() {
            return ControlFlow::Break("it writes a table (SELECT … INTO)".into());
        }
        ControlFlow::Continue(())
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use sqlparser::ast::SetExpr;

    use super::*;

    /// Read-only statements as a model would write them, and the text sent for each.
    const ALLOWED: &[(&str, &str)] = &[
        ("SELECT 1", "SELECT 1"),
        (
            "  select * from main.sales.orders;  ",
            "select * from main.sales.orders",
        ),
        ("SELECT 1; -- done", "SELECT 1"),
        ("-- top customers\nSELECT 1", "-- top customers\nSELECT 1"),
        (
            "SELECT 1\r\nFROM t -- windows line ends\r\n;",
            "SELECT 1\r\nFROM t -- windows line ends",
        ),
        (
            "WITH t AS (SELECT 1 AS a) SELECT a FROM t",
            "WITH t AS (SELECT 1 AS a) SELECT a FROM t",
        ),
        (
            "WITH recent AS (SELECT * FROM main.sales.orders WHERE day > current_date() - 7),\n\
             totals AS (SELECT customer_id, sum(amount) AS total FROM recent GROUP BY customer_id)\n\
             SELECT c.name, t.total, rank() OVER (ORDER BY t.total DESC) AS place\n\
             FROM totals t JOIN main.sales.customers c ON c.id = t.customer_id\n\
             ORDER BY place LIMIT 10",
            "WITH recent AS (SELECT * FROM main.sales.orders WHERE day > current_date() - 7),\n\
             totals AS (SELECT customer_id, sum(amount) AS total FROM recent GROUP BY customer_id)\n\
             SELECT c.name, t.total, rank() OVER (ORDER BY t.total DESC) AS place\n\
             FROM totals t JOIN main.sales.customers c ON c.id = t.customer_id\n\
             ORDER BY place LIMIT 10",
        ),
        (
            "SELECT region, count(*) FILTER (WHERE amount > 100) FROM main.sales.orders GROUP BY ALL",
            "SELECT region, count(*) FILTER (WHERE amount > 100) FROM main.sales.orders GROUP BY ALL",
        ),
        (
            "SELECT * FROM t LATERAL VIEW explode(items) e AS item",
            "SELECT * FROM t LATERAL VIEW explode(items) e AS item",
        ),
        (
            "/* a /* nested */ comment */ SHOW TABLES IN main.sales",
            "/* a /* nested */ comment */ SHOW TABLES IN main.sales",
        ),
        ("SHOW TABLES IN main.sales", "SHOW TABLES IN main.sales"),
        ("SHOW SCHEMAS IN main", "SHOW SCHEMAS IN main"),
        ("SHOW COLUMNS IN main.sales.orders", "SHOW COLUMNS IN main.sales.orders"),
        (
            "SHOW CREATE TABLE main.sales.orders",
            "SHOW CREATE TABLE main.sales.orders",
        ),
        ("DESCRIBE TABLE main.sales.orders", "DESCRIBE TABLE main.sales.orders"),
        ("describe table main.sales.orders;", "describe table main.sales.orders"),
        ("desc main.sales.orders", "desc main.sales.orders"),
        ("EXPLAIN SELECT 1", "EXPLAIN SELECT 1"),
        (
            "EXPLAIN SELECT region, sum(amount) FROM main.sales.orders GROUP BY region",
            "EXPLAIN SELECT region, sum(amount) FROM main.sales.orders GROUP BY region",
        ),
        ("(SELECT 1) UNION (SELECT 2)", "(SELECT 1) UNION (SELECT 2)"),
        ("SELECT ';' AS s", "SELECT ';' AS s"),
        ("SELECT 'a; DROP TABLE x' AS s", "SELECT 'a; DROP TABLE x' AS s"),
        ("SELECT 'it\\'s; delete' AS s", "SELECT 'it\\'s; delete' AS s"),
        ("SELECT \"-- not a comment\" AS s", "SELECT \"-- not a comment\" AS s"),
        ("SELECT `update`, `delete` FROM t", "SELECT `update`, `delete` FROM t"),
        ("SELECT * FROM main.`default`.t", "SELECT * FROM main.`default`.t"),
        (
            "SELECT created, updated_at, deleted FROM t",
            "SELECT created, updated_at, deleted FROM t",
        ),
        (
            "SELECT replace(name, 'a', 'b'), session_user() FROM t",
            "SELECT replace(name, 'a', 'b'), session_user() FROM t",
        ),
        (
            "SELECT url FROM t WHERE url LIKE 'https://%'",
            "SELECT url FROM t WHERE url LIKE 'https://%'",
        ),
        (
            "SELECT secret, ai_score FROM t -- columns, not calls",
            "SELECT secret, ai_score FROM t -- columns, not calls",
        ),
        ("SELECT\u{00A0}1\u{3000}AS one", "SELECT\u{00A0}1\u{3000}AS one"),
    ];

    /// Statements that must not run: writes, several statements, and every way found to
    /// hide one (SQL-01).
    const REFUSED: &[&str] = &[
        "",
        "  ;",
        "-- only a comment",
        "DELETE FROM main.sales.orders",
        "delete from t",
        "UPDATE t SET a = 1",
        "INSERT INTO t VALUES (1)",
        "INSERT OVERWRITE x SELECT 1",
        "MERGE INTO x USING y ON x.id = y.id WHEN MATCHED THEN DELETE",
        "CREATE TABLE x AS SELECT 1",
        "CREATE OR REPLACE VIEW v AS SELECT 1",
        "DROP TABLE x",
        "TRUNCATE TABLE x",
        "ALTER TABLE x ADD COLUMN y INT",
        "CACHE TABLE x",
        "UNCACHE TABLE x",
        "SET spark.x = 1",
        "USE main",
        "REFRESH TABLE x",
        "OPTIMIZE t",
        "VACUUM t",
        "COPY INTO t FROM 's3://bucket/x'",
        "GRANT SELECT ON TABLE t TO `x`",
        "REVOKE SELECT ON TABLE t FROM `x`",
        "EXPLAIN INSERT INTO t VALUES (1)",
        "EXPLAIN DELETE FROM t",
        "EXPLAIN ANALYZE SELECT 1",
        "SELECT * INTO t2 FROM t",
        "CALL main.default.cleanup()",
        "EXECUTE IMMEDIATE 'DROP TABLE x'",
        // Several statements.
        "SELECT 1; DROP TABLE x",
        "SELECT 1;;",
        "SELECT 1; SELECT 2",
        "SELECT 1;\nDROP TABLE x;",
        "SELECT 1 /* ; */; DELETE FROM t",
        // DML inside a query.
        "WITH t AS (SELECT 1) INSERT INTO x SELECT * FROM t",
        "WITH t AS (SELECT 1) MERGE INTO x USING t ON true WHEN MATCHED THEN DELETE",
        "WITH t AS (INSERT INTO x SELECT 1) SELECT * FROM t",
        "WITH a AS (WITH b AS (DELETE FROM x) SELECT 1) SELECT * FROM a",
        "SELECT * FROM (WITH t AS (UPDATE x SET a = 1) SELECT 1)",
        // Comments and quotes that end differently for Databricks and for the check.
        "/* SELECT */ DROP TABLE x",
        "WITH t AS (SELECT 1) SELECT * FROM t --\rINSERT INTO x SELECT 1",
        "SELECT 1 --\r; DROP TABLE x",
        "SELECT 1 -- \\\n; DROP TABLE x",
        "SELECT 1 AS a -- \\\n, '\n; DROP TABLE x; --'",
        "SELECT 1 --\u{0B}; DROP TABLE x",
        "SELECT 1 --\u{0C}; DROP TABLE x",
        "SELECT 1 --\u{85}; DROP TABLE x",
        "SELECT 1 --\u{2028}; DROP TABLE x",
        "SELECT 1 --\u{2029}; DROP TABLE x",
        "SELECT 1\u{0};DROP TABLE x",
        "SELECT 1 /* /*+ */ ; DROP TABLE x; -- */",
        "SELECT /*+ BROADCAST(t) */ * FROM t",
        "SELECT r'\\'; DROP TABLE x; --'",
        "SELECT R\"\\\"; DROP TABLE x; --\"",
        "SELECT * FROM s3://bucket/x--y",
        "SELECT $$; DROP TABLE x; $$",
        "SELECT $tag$; DROP TABLE x; $tag$",
        "SELECT 1 # comment\n; DROP TABLE x",
        "SELECT N'\\'; DROP TABLE x; --'",
        "SELECT 1 /* /* */ ; DROP TABLE x /* */",
        "SELECT 1 /* unclosed",
        "SELECT 'unclosed",
        "SELECT 'it\\'s'; DROP TABLE x; --'",
        "SELECT `a; DROP TABLE x",
        "SELECT 1;\u{00A0}DROP TABLE x",
        "SELECT 1;\u{3000}DROP TABLE x",
        // Functions that reach outside the warehouse, however they are written or nested.
        "SELECT http_request(conn => 'c', method => 'GET', path => '/')",
        "SELECT HTTP_Request(conn => 'c', method => 'GET', path => '/')",
        "SELECT system.builtin.http_request(conn => 'c', method => 'GET', path => '/')",
        "SELECT `http_request`(conn => 'c', method => 'GET', path => '/')",
        "SELECT http_request /* */ (conn => 'c', method => 'GET', path => '/')",
        "SELECT ai_query('endpoint', text) FROM t",
        "SELECT AI_summarize(text) FROM t",
        "SELECT * FROM ai_forecast(TABLE(t), horizon => '2030-01-01', time_col => 'd', value_col => 'v')",
        "SELECT * FROM read_files('s3://bucket/x')",
        "SELECT * FROM READ_KAFKA(bootstrapServers => 'h:9092', subscribe => 't')",
        "SELECT * FROM read_kinesis(streamName => 's')",
        "SELECT * FROM read_pubsub(subscriptionId => 's')",
        "SELECT * FROM read_pulsar(serviceUrl => 'u', topic => 't')",
        "SELECT * FROM read_statestore('/checkpoint')",
        "SELECT * FROM cloud_files_state('/checkpoint')",
        "SELECT * FROM remote_query('conn', query => 'DELETE FROM x')",
        "SELECT java_method('java.lang.System', 'exit', 1)",
        "SELECT reflect('java.lang.Runtime', 'getRuntime')",
        "SELECT try_reflect('java.lang.Runtime', 'getRuntime')",
        "SELECT * FROM vector_search(index => 'i', query_text => 'q')",
        "SELECT secret('scope', 'key')",
        "SELECT try_secret('scope', 'key')",
        "SELECT * FROM list_secrets()",
        "SELECT identifier('http_request')(conn => 'c')",
        "SELECT * FROM t WHERE a IN (SELECT secret('s', 'k'))",
        "WITH t AS (SELECT ai_query('e', 'q') AS a) SELECT * FROM t",
        "SELECT sum(a) OVER (PARTITION BY secret('s', 'k')) FROM t",
        "SELECT * FROM t LATERAL VIEW explode(array(http_request(conn => 'c'))) e AS x",
        "SELECT * FROM t, LATERAL (SELECT try_secret('s', 'k'))",
        "EXPLAIN SELECT http_request(conn => 'c')",
    ];

    #[test]
    fn read_only_statements_pass_with_a_trailing_semicolon_dropped() {
        for (statement, sent) in ALLOWED {
            assert_eq!(check(statement), Ok(*sent), "{statement:?}");
        }
    }

    #[test]
    fn sql_01_writes_several_statements_and_hidden_statements_are_refused() {
        for statement in REFUSED {
            assert!(check(statement).is_err(), "{statement:?} was accepted");
        }
    }

    #[test]
    fn sql_01_a_carriage_return_ending_a_comment_is_refused() {
        let bypass = "WITH t AS (SELECT 1) --\rINSERT INTO main.sales.orders SELECT * FROM t";
        assert_eq!(
            check(bypass),
            Err("it holds the character U+000D; use plain spaces and newlines".into())
        );
    }

    #[test]
    fn refusals_say_why_in_plain_words() {
        for (statement, why) in [
            ("", "it is empty"),
            ("DROP TABLE x", "it is a DROP statement"),
            ("INSERT INTO t VALUES (1)", "it is an INSERT statement"),
            (
                "WITH t AS (SELECT 1) INSERT INTO x SELECT * FROM t",
                "it contains an INSERT statement",
            ),
            ("EXPLAIN DELETE FROM t", "it contains a DELETE statement"),
            ("EXPLAIN SHOW TABLES", "it contains a SHOW statement"),
            ("EXPLAIN ANALYZE SELECT 1", "it is an EXPLAIN ANALYZE statement"),
            ("SELECT 1; SELECT 2", "it holds more than one statement"),
            (
                "SELECT http_request(conn => 'c')",
                "it calls http_request: it calls out to a URL, which can send data anywhere",
            ),
        ] {
            assert_eq!(check(statement), Err(why.into()), "{statement:?}");
        }
        let too_long = format!("SELECT '{}'", "x".repeat(MAX_STATEMENT_BYTES));
        assert_eq!(
            check(&too_long),
            Err(format!("it is longer than {MAX_STATEMENT_BYTES} bytes"))
        );
        let unknown = check("SELEC 1").unwrap_err();
        assert!(unknown.starts_with("it could not be parsed"), "{unknown}");
    }

    #[test]
    fn every_refused_function_is_refused_as_a_call_and_allowed_as_a_name() {
        for (name, _) in REFUSED_FUNCTIONS {
            let upper = name.to_ascii_uppercase();
            for call in [
                format!("SELECT {name}(1)"),
                format!("SELECT {upper}(1)"),
                format!("SELECT system.builtin.{name}(1)"),
                format!("SELECT `{name}` (1)"),
                format!("SELECT * FROM {name}('x')"),
                format!("SELECT * FROM t WHERE EXISTS (SELECT {name}('x'))"),
                format!("WITH c AS (SELECT {name}('x') AS v) SELECT v FROM c"),
            ] {
                assert!(check(&call).unwrap_err().contains(name), "{call}");
            }
            let column = format!("SELECT `{name}` FROM t");
            assert_eq!(check(&column), Ok(column.as_str()));
        }
    }

    #[test]
    fn the_deepest_statements_within_the_size_limit_are_refused_or_passed_without_overflowing() {
        let room = MAX_STATEMENT_BYTES - 20;
        for deep in [
            format!("SELECT 1{}", "+1".repeat(room / 2)),
            format!("SELECT {}1{}", "(".repeat(room / 2), ")".repeat(room / 2)),
            format!("SELECT {}1", "NOT ".repeat(room / 4)),
            format!("SELECT {}1", "-".repeat(room)),
            format!("SELECT 1 FROM t{}", " JOIN t ON true".repeat(room / 16)),
            format!("SELECT 1{}", " UNION SELECT 1".repeat(room / 15)),
        ] {
            let _ = check(&deep);
        }
    }

    /// Whether `statement` parses, independently of [`check`], to exactly one statement of
    /// a kind `run_sql` accepts (judged by its first keyword), holding no other statement
    /// (as a data-modifying CTE would) and selecting into no table.
    fn parses_as_one_read(statement: &str) -> bool {
        let Ok(parsed) = Parser::parse_sql(&DatabricksDialect {}, statement) else {
            return false;
        };
        let [parsed] = parsed.as_slice() else {
            return false;
        };
        let sql = parsed.to_string().to_ascii_uppercase();
        let first = sql.split([' ', '(']).next().unwrap_or_default();
        let kinds = [
            "", "SELECT", "WITH", "FROM", "VALUES", "SHOW", "DESCRIBE", "DESC", "EXPLAIN",
        ];
        let mut statements = 0;
        let nested = sqlparser::ast::visit_statements(parsed, |_| {
            statements += 1;
            if statements > 2 {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        });
        let alone = nested.is_continue()
            && match parsed {
                Statement::Explain { statement, .. } => statements == 2 && matches!(**statement, Statement::Query(_)),
                _ => statements == 1,
            };
        let into = matches!(parsed, Statement::Query(query)
            if matches!(&*query.body, SetExpr::Select(select) if select.into.is_some()));
        kinds.contains(&first) && !sql.starts_with("EXPLAIN ANALYZE") && alone && !into
    }

    /// Pieces of SQL, runs of which make statements both good and bad.
    const PIECES: &[&str] = &[
        "SELECT",
        "1",
        "a",
        "FROM",
        "t",
        "WITH",
        "x",
        "AS",
        "(",
        ")",
        ",",
        ";",
        "'",
        "\"",
        "`",
        "\\",
        "--",
        "/*",
        "*/",
        "/*+",
        "\n",
        "\r",
        "\r\n",
        " ",
        "\u{2028}",
        "\u{00A0}",
        "INSERT",
        "INTO",
        "DELETE",
        "UPDATE",
        "SET",
        "DROP",
        "TABLE",
        "MERGE",
        "EXPLAIN",
        "SHOW",
        "TABLES",
        "VALUES",
        "http_request",
        "secret",
        "ai_query",
        "r",
        ":",
        "//",
        "UNION",
        "WHERE",
    ];

    fn sql_pieces() -> impl Strategy<Value = String> {
        prop::collection::vec(prop::sample::select(PIECES), 0..24).prop_map(|p| p.concat())
    }

    /// Writes appended to an allowed statement in the properties below.
    const WRITES: &[&str] = &[
        "DROP TABLE main.sales.orders",
        "DELETE FROM main.sales.orders",
        "INSERT INTO main.sales.orders VALUES (1)",
        "UPDATE main.sales.orders SET amount = 0",
        "MERGE INTO x USING y ON true WHEN MATCHED THEN DELETE",
        "GRANT ALL PRIVILEGES ON CATALOG main TO `everyone`",
    ];

    /// The statements of [`ALLOWED`] that do not end in a `--` comment, which would take in
    /// whatever is appended.
    fn reads_without_a_line_comment() -> impl Strategy<Value = &'static str> {
        let reads: Vec<&str> = ALLOWED
            .iter()
            .map(|(read, _)| *read)
            .filter(|read| !read.contains("--"))
            .collect();
        prop::sample::select(reads)
    }

    proptest! {
        /// FZ-01: no input panics, and whatever passes is one read-only statement to an
        /// independent parse.
        #[test]
        fn anything_passed_is_one_read_only_statement(statement in sql_pieces()) {
            if let Ok(sent) = check(&statement) {
                prop_assert!(parses_as_one_read(sent), "{statement:?} sent as {sent:?}");
            }
        }

        #[test]
        fn no_string_makes_the_check_panic(statement in any::<String>()) {
            let _ = check(&statement);
        }

        /// SQL-01: a write after a `;`, however spaced or commented, is refused.
        #[test]
        fn sql_01_a_write_appended_to_a_read_is_refused(
            read in reads_without_a_line_comment(),
            gap in prop::sample::select(&[";", "; ", ";\n", ";\r\n", " ;/* */", "\n;--\n"][..]),
            write in prop::sample::select(WRITES),
        ) {
            let statement = format!("{read}{gap}{write}");
            prop_assert!(check(&statement).is_err(), "{statement:?} was accepted");
        }

        /// SQL-01: a write after a `--` comment ended by a carriage return is refused.
        #[test]
        fn sql_01_a_write_after_a_comment_ended_by_a_carriage_return_is_refused(
            (read, _) in prop::sample::select(ALLOWED),
            comment in "[ -~]{0,20}",
            gap in prop::sample::select(&["", ";", " ; "][..]),
            write in prop::sample::select(WRITES),
        ) {
            let statement = format!("{read} --{comment}\r{gap}{write}");
            prop_assert!(check(&statement).is_err(), "{statement:?} was accepted");
        }
    }
}
