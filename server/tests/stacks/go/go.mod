module klarna-stepup/stacks/go

go 1.19
