// The DeepSeek chat formats (spec §5.5), rendered to the exact strings the released chat
// templates produce: V3 (Dec 2024), V3-0324 / R1-0528, R1 (Jan 2025). The kind is sniffed from
// tokenizer_config.json's template text; the default is V3.
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace sluice {

enum class ChatTemplateKind { deepseek_v3, deepseek_v3_0324, deepseek_r1 };

struct ChatMessage {
    std::string role;     // system | user | assistant
    std::string content;
};

ChatTemplateKind chat_template_from_text(std::string_view jinja_template);
ChatTemplateKind chat_template_from_config_file(const std::string& tokenizer_config_path);
const char* chat_template_name(ChatTemplateKind kind);

// The rendered prompt, starting with the BOS text (tokenize it without adding another BOS).
std::string render_chat(const std::vector<ChatMessage>& messages, ChatTemplateKind kind, bool add_generation_prompt);

}  // namespace sluice
