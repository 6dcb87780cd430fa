package supervise

import (
	"fmt"
	"os"
	"regexp"
	"strings"
)

// envPlaceholder is `{env.NAME}`: the only placeholder this module expands.
// Any other brace, such as a shell's `${HOME}` inside `sh -c`, is left as is.
var envPlaceholder = regexp.MustCompile(`\{env\.([A-Za-z_][A-Za-z0-9_]*)\}`)

// expandEnv replaces `{env.NAME}` with Caddy's environment variable NAME.
// An unset variable is an error unless allowUnset (then it expands to "").
func expandEnv(s string, allowUnset bool) (string, error) {
	var err error
	out := envPlaceholder.ReplaceAllStringFunc(s, func(ph string) string {
		name := envPlaceholder.FindStringSubmatch(ph)[1]
		v, ok := os.LookupEnv(name)
		if !ok && !allowUnset && err == nil {
			err = fmt.Errorf("%s: environment variable %s is not set", ph, name)
		}
		return v
	})
	return out, err
}

// parseEnvFile reads a dotenv file. The rules:
//
//   - one KEY=VALUE a line; blank lines and lines starting with # are
//     skipped; an `export` and white space before the key are allowed; white space around the
//     key and the value is dropped;
//   - KEY is letters, digits and underscores, not starting with a digit;
//   - an unquoted VALUE ends at the end of the line or at a # that follows
//     white space (a comment);
//   - 'single-quoted' values are taken literally and may span lines;
//   - "double-quoted" values may span lines and understand \n, \r, \t, \",
//     \\ and \$ (any other backslash is kept as is);
//   - after a closing quote only white space or a # comment may follow;
//   - nothing is expanded: $VAR and ${VAR} stay as written;
//   - a key given twice takes the later value.
func parseEnvFile(data string) (map[string]string, error) {
	env := make(map[string]string)
	lines := strings.Split(strings.ReplaceAll(data, "\r\n", "\n"), "\n")
	for i := 0; i < len(lines); i++ {
		lineNo := i + 1
		line := strings.TrimSpace(lines[i])
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		if rest, ok := strings.CutPrefix(line, "export"); ok && rest != "" && (rest[0] == ' ' || rest[0] == '\t') {
			line = strings.TrimLeft(rest, " \t")
		}
		key, value, ok := strings.Cut(line, "=")
		key = strings.TrimSpace(key)
		// (errors never quote the file: it may be another file than an env
		// file, a secret one, that the config names by mistake or by intent)
		if !ok {
			return nil, fmt.Errorf("line %d: not KEY=VALUE (no =)", lineNo)
		}
		if !validEnvName(key) {
			return nil, fmt.Errorf("line %d: what comes before = is not a variable name (letters, digits, _; not starting with a digit)", lineNo)
		}
		value = strings.TrimLeft(value, " \t")
		if value == "" || (value[0] != '"' && value[0] != '\'') {
			if j := commentStart(value); j >= 0 {
				value = value[:j]
			}
			env[key] = strings.TrimRight(value, " \t")
			continue
		}
		// a quoted value, perhaps over several lines
		quote := value[0]
		rest := value[1:]
		var sb strings.Builder
		for {
			end, text := scanQuoted(rest, quote)
			sb.WriteString(text)
			if end >= 0 {
				after := strings.TrimSpace(rest[end+1:])
				if after != "" && !strings.HasPrefix(after, "#") {
					return nil, fmt.Errorf("line %d: something other than a # comment after the closing quote of %s", i+1, key)
				}
				break
			}
			i++
			if i >= len(lines) {
				return nil, fmt.Errorf("line %d: the %c quote of %s is never closed", lineNo, quote, key)
			}
			sb.WriteByte('\n')
			rest = lines[i]
		}
		env[key] = sb.String()
	}
	return env, nil
}

// scanQuoted reads s up to the closing quote: it returns the quote's index
// (-1 if the line ends first) and the text, with escapes applied in double
// quotes.
func scanQuoted(s string, quote byte) (int, string) {
	var sb strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == quote:
			return i, sb.String()
		case c == '\\' && quote == '"' && i+1 < len(s):
			i++
			switch s[i] {
			case 'n':
				sb.WriteByte('\n')
			case 'r':
				sb.WriteByte('\r')
			case 't':
				sb.WriteByte('\t')
			case '"', '\\', '$':
				sb.WriteByte(s[i])
			default:
				sb.WriteByte('\\')
				sb.WriteByte(s[i])
			}
		default:
			sb.WriteByte(c)
		}
	}
	return -1, sb.String()
}

// commentStart is the index of a # that starts a comment in an unquoted
// value: at the start, or after white space.
func commentStart(v string) int {
	for i := 0; i < len(v); i++ {
		if v[i] == '#' && (i == 0 || v[i-1] == ' ' || v[i-1] == '\t') {
			return i
		}
	}
	return -1
}

func validEnvName(k string) bool {
	if k == "" || (k[0] >= '0' && k[0] <= '9') {
		return false
	}
	for _, c := range k {
		if !(c == '_' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9') {
			return false
		}
	}
	return true
}
